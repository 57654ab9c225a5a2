/**
 * `deno task bench`: dense vs draft attention on the chosen backend, one table.
 *
 * One FLOP formula for every row: dense attention does 4 * batch * heads * tokens^2 * headDim
 * floating-point operations (QK^T and PV, two per multiply-add). Draft rows report "effective"
 * TFLOP/s = dense FLOPs / draft time, so the column compares directly with the dense row.
 *
 * GPU rows are timed with many runs per synchronisation on caller-owned buffers (no readback),
 * since every `onSubmittedWorkDone` costs >= 10 ms in Deno.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../mod.ts";
import type { Runtime } from "../mod.ts";
import type { DraftAttentionOptions, DType, TensorArray } from "../src/types.ts";

const { values: args } = parseArgs({
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
    help: { type: "boolean", default: false },
  },
});

if (args.help) {
  console.log(`deno task bench [--backend auto|webgpu|wasm] [--quick] [--json]
  [--shape NAME]... [--dtype f16|f32] [--sparsity 0.75,0.9] [--reps N] [--limits adapter|default]
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
  dtype: DType;
  tokens: number;
  sparsity: number | "dense";
  ms: number;
  tflops: number;
  speedup: number;
  density?: number;
}

function random(n: number, seed: number, dtype: DType): TensorArray {
  // A repeated block of seeded values: fast to make for a billion elements, enough for timing.
  const block = new Float32Array(Math.min(n, 1 << 16));
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

async function benchShape(rt: Runtime, shape: Shape, dtype: DType, reps: number): Promise<Row[]> {
  const rows: Row[] = [];
  const probe = rt.draftAttention({ ...shape.geometry, dtype, sparsity: 0 });
  const { batch = 1 } = shape.geometry;
  const spec = probe.spec;
  probe.dispose();
  const { tokens, heads, headDim } = spec;
  const n = batch * tokens * heads * headDim;
  const flops = 4 * batch * heads * tokens * tokens * headDim;
  const q = random(n, 1, dtype), k = random(n, 2, dtype), v = random(n, 3, dtype);
  let run: (op: { run: (...a: never[]) => Promise<unknown> }) => Promise<unknown>;
  let sync = () => Promise.resolve();
  const buffers: GPUBuffer[] = [];
  const device = rt.device;
  if (rt.backend === "webgpu" && device) {
    const make = (data?: TensorArray) => {
      const b = device.createBuffer({
        size: n * (dtype === "f16" ? 2 : 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
      if (data) device.queue.writeBuffer(b, 0, data as Float32Array<ArrayBuffer>);
      buffers.push(b);
      return b;
    };
    const bufs = { q: make(q), k: make(k), v: make(v), out: make() };
    run = (op) => (op.run as unknown as (b: typeof bufs) => Promise<void>)(bufs);
    sync = () => device.queue.onSubmittedWorkDone();
  } else {
    run = (op) => (op.run as unknown as (...a: TensorArray[]) => Promise<unknown>)(q, k, v);
  }
  const denseOp = rt.attention({ batch, tokens, heads, headDim, dtype });
  const denseMs = await timeIt(() => run(denseOp), reps, sync);
  denseOp.dispose();
  const base = { shape: shape.name, backend: rt.backend, dtype, tokens };
  rows.push({ ...base, sparsity: "dense", ms: denseMs, tflops: flops / denseMs / 1e9, speedup: 1 });
  for (const sparsity of shape.sparsities) {
    const op = rt.draftAttention({ ...shape.geometry, dtype, sparsity });
    const ms = await timeIt(() => run(op), reps, sync);
    const density = (await op.lastMask()).density;
    op.dispose();
    rows.push({
      ...base,
      sparsity,
      ms,
      tflops: flops / ms / 1e9,
      speedup: denseMs / ms,
      density,
    });
  }
  for (const b of buffers) b.destroy();
  return rows;
}

const rt = await openRuntime({
  backend: args.backend as "auto" | "webgpu" | "wasm",
  limits: args.limits as "adapter" | "default",
});
const info = rt.describe();
const gpu = rt.backend === "webgpu" && !/llvmpipe/i.test(info.adapter);
const shapes = args.shape?.length
  ? args.shape.map((s) => {
    const found = SHAPES()[s];
    if (!found) throw new Error(`unknown --shape ${s}`);
    return found;
  })
  : args.quick || !gpu
  ? [SHAPES()["quick-8k"]]
  : [SHAPES()["hunyuan-768p"], SHAPES()["wan-480p"]];
const dtypes: DType[] = args.dtype ? [args.dtype as DType] : gpu ? ["f16", "f32"] : ["f32"];
const reps = args.reps ? Number(args.reps) : gpu ? 5 : 2;
if (args.sparsity) {
  const list = args.sparsity.split(",").map(Number);
  for (const s of shapes) s.sparsities = list;
}
if (!args.json) {
  console.log(`backend: ${info.backend} (${info.reason}); adapter: ${info.adapter}`);
  console.log(`features: ${info.features.join(", ") || "none"}; limits: ${args.limits}`);
}
const all: Row[] = [];
for (const shape of shapes) {
  for (const dtype of dtypes) {
    const rows = await benchShape(rt, shape, dtype, reps);
    all.push(...rows);
    if (!args.json) {
      for (const r of rows) {
        console.log(
          [
            r.shape.padEnd(14),
            r.backend.padEnd(7),
            r.dtype,
            `${r.tokens}`.padStart(7),
            `${r.sparsity}`.padStart(6),
            `${r.ms.toFixed(2)} ms`.padStart(12),
            `${r.tflops.toFixed(3)} TFLOP/s`.padStart(16),
            `${r.speedup.toFixed(2)}x`.padStart(8),
            r.density === undefined ? "" : `density ${r.density.toFixed(3)}`,
          ].join(" "),
        );
      }
    }
  }
}
if (args.json) console.log(JSON.stringify({ info, rows: all }, null, 2));
rt.dispose();
