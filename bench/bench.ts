/**
 * `deno task bench`: dense vs draft attention on the chosen backend, one table.
 *
 * One FLOP formula for every row: dense attention does 4 * batch * heads * tokens^2 * headDim
 * floating-point operations (QK^T and PV, two per multiply-add). Draft rows report "effective"
 * TFLOP/s = dense FLOPs / draft time, so the column compares directly with the dense row.
 *
 * GPU rows are timed with many runs per synchronisation on caller-owned buffers (no readback),
 * since every `onSubmittedWorkDone` costs >= 10 ms in Deno. Where a tensor exceeds the device's
 * largest buffer (the HunyuanVideo shape under WebGPU's default limits: 778 MB per f16 tensor
 * against 256 MiB), no caller buffer can hold it: those rows run `op.run(q, k, v)` on typed
 * arrays instead (io "typed": upload, every piece, readback), in the BHSD layout so that the op
 * splits per head; `--io typed` times that path everywhere, for a like-for-like comparison, and
 * `--limits adapter,default` runs both limits in one process. Where the device has
 * `timestamp-query`, draft rows also get per-stage GPU times of one extra (profiled) run:
 * pool, map, select, lists (the draft overhead) and attention; the "overhead" column is the
 * draft stages' share of that run, `--json` lists the stage times in ms.
 *
 * Output is written as each row completes, so that a row that fails (or a run cut short) keeps
 * every row before it: the table, or with `--json` JSON Lines (one object per line: `info`
 * first, then a `row` or an `error` per row). A failing shape and dtype prints its error and the
 * bench goes on with the next; the exit code is then 1. Bad flags exit 2 with one line.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../mod.ts";
import type { Runtime } from "../mod.ts";
import { buildPlan } from "../src/plan.ts";
import type {
  DraftAttentionOptions,
  DraftSpec,
  DType,
  Layout,
  Precision,
  TensorArray,
} from "../src/types.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { type StageTimes, WebGpuOp } from "../src/webgpu/op.ts";
import { ortPeer } from "./_ort_webgpu.ts";
import { chooseIo } from "./_gpu_io.ts";

/** A bad flag: one line on stderr, exit 2 (no stack trace). */
function usage(message: string): never {
  console.error(`bench: ${message} (see --help)`);
  Deno.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "string", default: "auto" },
      quick: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      shape: { type: "string", multiple: true },
      dtype: { type: "string", default: "" },
      sparsity: { type: "string", default: "" },
      reps: { type: "string", default: "" },
      limits: { type: "string", default: "adapter" },
      layout: { type: "string", default: "BSHD" },
      io: { type: "string", default: "buffers" },
      precision: { type: "string", default: "f32" },
      threads: { type: "string", default: "" },
      // The onnxruntime-web WebGPU MultiHeadAttention row (bench/_ort_webgpu.ts).
      peer: { type: "boolean", default: false },
      "no-peer": { type: "boolean", default: false },
      "peer-budget": { type: "string", default: "60" },
      help: { type: "boolean", default: false },
    },
  });
} catch (e) {
  // parseArgs: ERR_PARSE_ARGS_UNKNOWN_OPTION, ERR_PARSE_ARGS_INVALID_OPTION_VALUE, ...
  usage((e as Error).message.split("\n")[0]);
}
const args = parsed.values;

if (args.help) {
  console.log(`deno task bench [--backend auto|webgpu|wasm] [--quick] [--json] (JSON Lines, each row
  as it completes)
  [--shape NAME]... [--dtype f16|f32] [--sparsity 0.75,0.9] [--reps N]
  [--limits adapter|default|adapter,default] [--layout BSHD|BHSD] [--io buffers|typed]
  [--precision f32|f16-pv] (P V arithmetic of our kernels; default f32)
  [--threads N] (WebAssembly threads; default every core)
  [--peer | --no-peer] [--peer-budget S] (onnxruntime-web WebGPU row after each dense row:
  default on a hardware GPU; at most S seconds a row, default 60; DRAFTATTN_ORT=bundle.mjs)
shapes: ${Object.keys(SHAPES()).join(", ")}`);
  Deno.exit(0);
}

interface Shape {
  name: string;
  geometry: Omit<DraftAttentionOptions, "sparsity" | "dtype">;
  sparsities: number[];
}

function SHAPES(): Record<string, Shape> {
  return {
    // HunyuanVideo 768p self-attention: 126,720 video + 256 text tokens, 24 heads x 128.
    "hunyuan-768p": {
      name: "hunyuan-768p",
      geometry: { model: "hunyuanvideo-768p" },
      sparsities: [0.9],
    },
    // Wan2.1 1.3B 480p: 21 x 30 x 52 = 32,760 tokens, 12 heads x 128.
    "wan-480p": {
      name: "wan-480p",
      geometry: { model: "wan2.1-t2v-1.3b-480p" },
      sparsities: [0.75, 0.9],
    },
    // CPU-sized shapes.
    "quick-8k": {
      name: "quick-8k",
      geometry: { frames: 4, height: 32, width: 64, heads: 2, headDim: 64 },
      sparsities: [0.75, 0.9],
    },
    "wasm-16k": {
      name: "wasm-16k",
      geometry: { frames: 8, height: 32, width: 64, heads: 1, headDim: 64 },
      sparsities: [0.9],
    },
  };
}

interface Row {
  shape: string;
  backend: string;
  /** WebGPU limits requested: the adapter's or WebGPU's defaults. */
  limits: string;
  /** GPU rows: caller GPUBuffers ("buffers") or typed arrays in and out ("typed"). */
  io?: "buffers" | "typed";
  /** Pieces the draft op is split into to fit the device's bindings (GPU rows). */
  pieces?: number;
  /**
   * GPU memory the draft op keeps beyond Q, K, V and O (tables, block lists, draft scratch), in
   * bytes and as a share of the four tensors' bytes (GPU rows).
   */
  extraBytes?: number;
  extraShare?: number;
  layout: string;
  dtype: DType;
  /** `--precision` where not the default f32 P V. */
  precision?: Precision;
  tokens: number;
  sparsity: number | "dense";
  ms: number;
  tflops: number;
  speedup: number;
  density?: number;
  /** GPU ms per stage of one profiled run (WebGPU with timestamp-query). */
  stages?: StageTimes;
  /** Share of the draft stages (pool, map, select, lists) in the profiled run. */
  overhead?: number;
  /** Peer rows: max |diff| against our dense row on the same inputs. */
  error?: number;
  /** Peer rows: how it ran, or why it did not. */
  note?: string;
  /** Peer rows: the rest of the comparison (bench/_ort_webgpu.ts). */
  peer?: Record<string, unknown>;
}

/**
 * Stage times of a draft op, median of 3 profiled runs: the same spec and plan built as a
 * kernel op on the runtime's device (its own pipeline cache), since the runtime's op wraps its
 * kernel. Undefined without `timestamp-query`.
 */
async function profileStages(
  device: GPUDevice,
  spec: DraftSpec,
  bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer },
): Promise<StageTimes | undefined> {
  if (!device.features.has("timestamp-query")) return undefined;
  const op = new WebGpuOp(new GpuContext(device), spec, buildPlan(spec), () => {});
  try {
    await op.runBuffers(bufs);
    const runs: StageTimes[] = [];
    for (let i = 0; i < 3; i++) {
      const t = await op.profile(bufs);
      if (t) runs.push(t);
    }
    if (!runs.length) return undefined;
    const total = (t: StageTimes) => Object.values(t).reduce((a, b) => a + b, 0);
    return runs.sort((a, b) => total(a) - total(b))[runs.length >> 1];
  } finally {
    op.dispose();
  }
}

function random(n: number, seed: number, dtype: DType): TensorArray {
  // A repeated block of seeded values: fast to make for a billion elements, enough for timing.
  // Its length is prime so that rows and heads never line up with a repeat (repeated rows
  // would tie in the draft map and inflate the kept density).
  const block = new Float32Array(Math.min(n, 1_000_003));
  let s = seed >>> 0;
  for (let i = 0; i < block.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    block[i] = (s / 2 ** 32 - 0.5) * 2;
  }
  const out = dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i += block.length) {
    out.set(block.subarray(0, Math.min(block.length, n - i)), i);
  }
  return out;
}

async function timeIt(fn: () => Promise<unknown>, reps: number, sync: () => Promise<void>) {
  await fn(); // warm-up: pipelines, first-touch
  await sync();
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await fn();
  await sync();
  return (performance.now() - t0) / reps;
}

async function benchShape(
  rt: Runtime,
  limits: string,
  shape: Shape,
  dtype: DType,
  reps: number,
  emit: (row: Row) => void,
): Promise<void> {
  const layout = args.layout as Layout;
  const precision = args.precision as Precision;
  const geometry = { ...shape.geometry, layout, precision };
  const probe = rt.draftAttention({ ...geometry, dtype, sparsity: 0 });
  const { batch = 1 } = shape.geometry;
  const spec = probe.spec;
  probe.dispose();
  const { tokens, heads, headDim } = spec;
  const n = batch * tokens * heads * headDim;
  const flops = 4 * batch * heads * tokens * tokens * headDim;
  const q = random(n, 1, dtype), k = random(n, 2, dtype), v = random(n, 3, dtype);
  let run: (op: { run: (...a: never[]) => Promise<unknown> }) => Promise<unknown>;
  let sync = () => Promise.resolve();
  let profile: ((spec: DraftSpec) => Promise<StageTimes | undefined>) | undefined;
  const buffers: GPUBuffer[] = [];
  const device = rt.device;
  let gpuBufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer } | undefined;
  const bytes = n * (dtype === "f16" ? 2 : 4);
  // Caller buffers unless they cannot work here (bench/_gpu_io.ts): typed arrays then.
  const choice = device
    ? chooseIo({
      batch,
      tokens,
      heads,
      headDim,
      layout,
      dtype,
      limits: device.limits,
      want: args.io as "buffers" | "typed",
    })
    : { io: "buffers" as const };
  const io = choice.io;
  if (choice.reason) progress(`${shape.name} ${dtype} ${limits}: typed arrays: ${choice.reason}`);
  try {
    await benchRows();
  } finally {
    for (const b of buffers) b.destroy();
  }

  async function benchRows(): Promise<void> {
    if (rt.backend === "webgpu" && device && io === "buffers") {
      const make = (data?: TensorArray) => {
        const b = device.createBuffer({
          size: n * (dtype === "f16" ? 2 : 4),
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
        });
        if (data) device.queue.writeBuffer(b, 0, data as Float32Array<ArrayBuffer>);
        buffers.push(b);
        return b;
      };
      const bufs = gpuBufs = { q: make(q), k: make(k), v: make(v), out: make() };
      run = (op) => (op.run as unknown as (b: typeof bufs) => Promise<void>)(bufs);
      sync = () => device.queue.onSubmittedWorkDone();
      profile = (spec) => profileStages(device, spec, bufs);
    } else {
      run = (op) => (op.run as unknown as (...a: TensorArray[]) => Promise<unknown>)(q, k, v);
    }
    const denseOp = rt.attention({ batch, tokens, heads, headDim, dtype, layout, precision });
    const denseMs = await timeIt(() => run(denseOp), reps, sync);
    const denseSpec = denseOp.spec;
    denseOp.dispose();
    const base = {
      shape: shape.name,
      backend: rt.backend,
      limits,
      ...(device ? { io: io as Row["io"] } : {}),
      layout,
      dtype,
      ...(precision === "f32" ? {} : { precision }),
      tokens,
    };
    emit({
      ...base,
      sparsity: "dense",
      ms: denseMs,
      tflops: flops / denseMs / 1e9,
      speedup: 1,
    });
    if (peer && device) {
      // gpuBufs.out holds our dense output: the peer's error is measured against it.
      const { ms, error, note, ...more } = gpuBufs
        ? await ortPeer({
          device,
          spec: denseSpec,
          bufs: gpuBufs,
          cpu: { q, k, v },
          reps,
          budgetS: Number(args["peer-budget"]),
        })
        : { ms: NaN, error: undefined, note: "skipped: GPUBuffers only (io typed here)" };
      const [tflops, speedup] = [flops / ms / 1e9, denseMs / ms];
      emit({
        ...base,
        backend: "ort-webgpu",
        sparsity: "dense",
        ms,
        tflops,
        speedup,
        error,
        note,
        peer: more,
      });
    }
    for (const sparsity of shape.sparsities) {
      const op = rt.draftAttention({ ...geometry, dtype, sparsity });
      const ms = await timeIt(() => run(op), reps, sync);
      const density = (await op.lastMask()).density;
      const draftSpec = op.spec as DraftSpec;
      const facts = device ? opFacts(draftSpec, device) : undefined;
      op.dispose();
      const stages = await profile?.(draftSpec);
      const total = stages ? Object.values(stages).reduce((a, b) => a + b, 0) : 0;
      emit({
        ...base,
        sparsity,
        ms,
        tflops: flops / ms / 1e9,
        speedup: denseMs / ms,
        density,
        ...(facts
          ? {
            pieces: facts.pieces,
            extraBytes: facts.extraBytes,
            extraShare: facts.extraBytes / (4 * bytes),
          }
          : {}),
        ...(stages && total > 0 ? { stages, overhead: (total - stages.attention) / total } : {}),
      });
    }
  }
}

/** Progress and notes: stderr, so that stdout stays the table or the JSON lines. */
function progress(message: string): void {
  console.error(`bench: ${message}`);
}

/**
 * Pieces a draft op of `spec` is split into on `device` and the GPU memory it keeps beyond Q, K,
 * V and O, from an op built as src/webgpu/op.ts builds it (its buffers only; no run).
 */
function opFacts(spec: DraftSpec, device: GPUDevice): { pieces: number; extraBytes: number } {
  const op = new WebGpuOp(new GpuContext(device), spec, buildPlan(spec), () => {});
  const facts = { pieces: op.pieceCount, extraBytes: op.extraBytes };
  op.dispose();
  return facts;
}

const limitsList = args.limits.split(",") as ("adapter" | "default")[];
for (
  const [flag, value, allowed] of [
    ["--backend", args.backend, ["auto", "webgpu", "wasm"]],
    ["--layout", args.layout, ["BSHD", "BHSD"]],
    ["--io", args.io, ["buffers", "typed"]],
    ["--precision", args.precision, ["f32", "f16-pv"]],
    ...(args.dtype ? [["--dtype", args.dtype, ["f16", "f32"]] as const] : []),
    ...limitsList.map((l) => ["--limits", l, ["adapter", "default"]] as const),
    ...(args.shape ?? []).map((s) => ["--shape", s, Object.keys(SHAPES())] as const),
  ] as const
) {
  if (!(allowed as readonly string[]).includes(value)) {
    usage(`${flag} must be one of ${allowed.join(", ")}, got "${value}"`);
  }
}
for (
  const [flag, value, min] of [
    ["--reps", args.reps, 1],
    ["--threads", args.threads, 1],
    ["--peer-budget", args["peer-budget"], 0],
  ] as const
) {
  if (value !== "" && !(Number.isInteger(Number(value)) && Number(value) >= min)) {
    usage(`${flag} must be an integer >= ${min}, got "${value}"`);
  }
}
const sparsityList = args.sparsity ? args.sparsity.split(",").map(Number) : undefined;
if (sparsityList?.some((x) => !(x >= 0 && x < 1))) {
  usage(`--sparsity must be numbers in [0, 1), comma-separated, got "${args.sparsity}"`);
}
const open = (limits: "adapter" | "default") =>
  openRuntime({
    backend: args.backend as "auto" | "webgpu" | "wasm",
    limits,
    threads: args.threads ? Number(args.threads) : undefined,
  });
let rt = await open(limitsList[0]);
const info = rt.describe();
const gpu = rt.backend === "webgpu" && !/llvmpipe/i.test(info.adapter);
const shapes = args.shape?.length
  ? args.shape.map((s) => SHAPES()[s])
  : args.quick || !gpu
  ? [SHAPES()["quick-8k"]]
  : [SHAPES()["hunyuan-768p"], SHAPES()["wan-480p"]];
const dtypes: DType[] = args.dtype ? [args.dtype as DType] : gpu ? ["f16", "f32"] : ["f32"];
const reps = args.reps ? Number(args.reps) : gpu ? 5 : 2;
const peer = rt.backend === "webgpu" && !args["no-peer"] && (args.peer || gpu);
if (sparsityList) { for (const s of shapes) s.sparsities = sparsityList; }
if (args.json) console.log(JSON.stringify({ type: "info", ...info, limits: args.limits }));
else {
  console.log(`backend: ${info.backend} (${info.reason}); adapter: ${info.adapter}`);
  console.log(
    `features: ${info.features.join(", ") || "none"}; limits: ${args.limits}` +
      (info.threads ? `; threads: ${info.threads}` : ""),
  );
}
let failed = 0;
for (const [li, limits] of limitsList.entries()) {
  if (li > 0) {
    rt.dispose();
    rt = await open(limits);
  }
  for (const shape of shapes) {
    for (const dtype of dtypes) {
      try {
        await benchShape(rt, limits, shape, dtype, reps, printRow);
      } catch (e) {
        // One failing shape must not lose the rows before it nor stop the others.
        failed++;
        const code = (e as { code?: string }).code;
        const message = e instanceof Error ? e.message : String(e);
        if (args.json) {
          console.log(JSON.stringify({
            type: "error",
            shape: shape.name,
            dtype,
            limits,
            ...(code ? { code } : {}),
            message,
          }));
        } else {console.log(
            `${shape.name.padEnd(14)} ${limits.padEnd(7)} ${dtype} FAILED: ${message}`,
          );}
      }
    }
  }
}

/** Prints one row as soon as it is measured: a table line, or a JSON line with --json. */
function printRow(r: Row): void {
  if (args.json) console.log(JSON.stringify({ type: "row", ...r }));
  else {
    {
      console.log(
        [
          r.shape.padEnd(14),
          r.backend.padEnd(10),
          r.limits.padEnd(7),
          (r.io ?? "").padEnd(7),
          r.layout,
          r.dtype + (r.precision ? ` (${r.precision})` : ""),
          `${r.tokens}`.padStart(7),
          `${r.sparsity}`.padStart(6),
          `${r.ms.toFixed(2)} ms`.padStart(12),
          `${r.tflops.toFixed(3)} TFLOP/s`.padStart(16),
          `${r.speedup.toFixed(2)}x`.padStart(8),
          r.density === undefined ? "" : `density ${r.density.toFixed(3)}`,
          r.pieces === undefined ? "" : `pieces ${r.pieces}`,
          r.extraShare === undefined
            ? ""
            : `extra memory ${(r.extraBytes! / 2 ** 20).toFixed(1)} MiB (${
              (100 * r.extraShare).toFixed(2)
            }% of QKVO)`,
          r.overhead === undefined ? "" : `overhead ${(100 * r.overhead).toFixed(1)}%`,
          r.stages === undefined
            ? ""
            : `(${Object.entries(r.stages).map(([s, t]) => `${s} ${t.toFixed(2)}`).join(", ")} ms)`,
          r.error === undefined ? "" : `max|diff| ${r.error.toExponential(1)} vs dense;`,
          r.note ?? "",
        ].join(" "),
      );
    }
  }
}

rt.dispose();
if (failed) Deno.exit(1);
