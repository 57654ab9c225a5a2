/**
 * `deno task bench:peers`: CPU attention in JavaScript engines, side by side in one process, on
 * the same inputs, printed as one table:
 * - draftattn's WebAssembly backend on 1 thread and on every core (`--threads`);
 * - onnxruntime-web's WebAssembly backend (`npm:onnxruntime-web`, a benchmark-only dependency),
 *   its `com.microsoft` MultiHeadAttention operator in a one-node ONNX model written by the
 *   tiny protobuf writer of bench/_onnx.ts, on 1 thread and on as many as ours;
 * - draftattn's WebGPU backend on whatever adapter Deno finds (llvmpipe, a software Vulkan
 *   renderer, on a machine without a GPU), typed arrays in and out (the readback included).
 * Every row's output is compared with the first row's (our one-thread dense attention; draft
 * rows with our one-thread draft attention): the "max |diff|" column.
 *
 * FLOPs: dense attention = 4 * batch * heads * tokens^2 * headDim; draft rows report effective
 * GFLOP/s = dense FLOPs / draft time. Times are the best of `--reps` runs after a warm-up. The
 * load average is printed before and after: other processes on the machine slow the threaded
 * rows first.
 */
import { parseArgs } from "node:util";
// A benchmark-only dependency, pinned here rather than in deno.json's imports.
// deno-lint-ignore no-import-prefix
import * as ort from "npm:onnxruntime-web@1.30.0";
import { openRuntime, type Runtime } from "../mod.ts";
import { type Field, message, mhaModel, tensorInfo } from "./_onnx.ts";
import type { TensorArray } from "../src/types.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: String(navigator.hardwareConcurrency) },
    reps: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
    "no-webgpu": { type: "boolean", default: false },
    "no-draft": { type: "boolean", default: false },
    // Internal: run only onnxruntime-web on this many threads, outputs into --ort-dir.
    "ort-threads": { type: "string", default: "" },
    "ort-dir": { type: "string", default: "" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(
    "deno task bench:peers [--threads N] [--reps N] [--quick] [--no-webgpu] [--no-draft]",
  );
  Deno.exit(0);
}
const THREADS = Number(args.threads);
const REPS = Number(args.reps);

// ---------------------------------------------------------------------------------------------
// A second ONNX graph (the MultiHeadAttention model and the protobuf writer: bench/_onnx.ts)
// ---------------------------------------------------------------------------------------------

/**
 * The same attention as plain ONNX operators (opset 17): Transpose to [1, heads, tokens,
 * headDim], MatMul(q, k^T), Mul by the scale, Softmax over the last axis, MatMul with v,
 * Transpose back. It materialises the [heads, tokens, tokens] scores, as an exported PyTorch
 * SDPA graph does.
 */
function matmulModel(tokens: number, heads: number, headDim: number): Uint8Array {
  const dims = [1, tokens, heads, headDim];
  const perm = (p: number[]): Field => [5, "bytes", [
    [1, "bytes", "perm"],
    ...p.map((x): Field => [8, "varint", x]),
    [20, "varint", 7], // INTS
  ]];
  const node = (op: string, inputs: string[], output: string, ...attrs: Field[]): Field => [
    1,
    "bytes",
    [
      ...inputs.map((i): Field => [1, "bytes", i]),
      [2, "bytes", output],
      [3, "bytes", output],
      [4, "bytes", op],
      ...attrs,
    ],
  ];
  const graph: Field[] = [
    node("Transpose", ["q"], "qt", perm([0, 2, 1, 3])),
    node("Transpose", ["k"], "kt", perm([0, 2, 3, 1])),
    node("Transpose", ["v"], "vt", perm([0, 2, 1, 3])),
    node("MatMul", ["qt", "kt"], "s"),
    node("Mul", ["s", "scale"], "ss"),
    node("Softmax", ["ss"], "p"),
    node("MatMul", ["p", "vt"], "ot"),
    node("Transpose", ["ot"], "o", perm([0, 2, 1, 3])),
    [2, "bytes", "attention"],
    // TensorProto: dims (none: a scalar), data_type 1 = FLOAT, float_data, name.
    [5, "bytes", [[2, "varint", 1], [4, "f32", 1 / Math.sqrt(headDim)], [8, "bytes", "scale"]]],
    tensorInfo(11, "q", dims),
    tensorInfo(11, "k", dims),
    tensorInfo(11, "v", dims),
    tensorInfo(12, "o", dims),
  ];
  return message([
    [1, "varint", 8],
    [2, "bytes", "draftattn bench/peers.ts"],
    [8, "bytes", [[1, "bytes", ""], [2, "varint", 17]]],
    [7, "bytes", graph],
  ]);
}

// ---------------------------------------------------------------------------------------------
// Cases and rows
// ---------------------------------------------------------------------------------------------

interface Case {
  name: string;
  tokens: number;
  heads: number;
  headDim: number;
  /** A draft geometry (heads and headDim above): adds our draft rows at sparsity 0.9. */
  draft?: { frames: number; height: number; width: number };
}

const CASES: Case[] = args.quick ? [{ name: "dense 2k", tokens: 2048, heads: 2, headDim: 64 }] : [
  // onnxruntime-web's MultiHeadAttention overflows a 32-bit size from 4,096 tokens on.
  { name: "dense 2k x 4 heads, D 64", tokens: 2048, heads: 4, headDim: 64 },
  { name: "dense 4k x 2 heads, D 64", tokens: 4096, heads: 2, headDim: 64 },
  { name: "dense 4k x 1 head, D 128", tokens: 4096, heads: 1, headDim: 128 },
  {
    name: "wasm-16k (8 x 32 x 64, D 64)",
    tokens: 16384,
    heads: 1,
    headDim: 64,
    draft: args["no-draft"] ? undefined : { frames: 8, height: 32, width: 64 },
  },
];

interface Row {
  what: string;
  threads: number | string;
  ms: number;
  gflops: number;
  diff: number | undefined;
  note?: string;
}

function random(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = (s / 2 ** 32 - 0.5) * 2;
  }
  return x;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN wins
  }
  return m;
}

async function best(fn: () => Promise<unknown>, reps: number): Promise<number> {
  await fn();
  let ms = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await fn();
    ms = Math.min(ms, performance.now() - t0);
  }
  return ms;
}

async function ours(
  rt: Runtime,
  c: Case,
  q: TensorArray,
  k: TensorArray,
  v: TensorArray,
  sparsity?: number,
): Promise<{ ms: number; out: TensorArray; density?: number }> {
  const op = sparsity === undefined
    ? rt.attention({ tokens: c.tokens, heads: c.heads, headDim: c.headDim })
    : rt.draftAttention({ ...c.draft!, heads: c.heads, headDim: c.headDim, sparsity });
  try {
    const reps = rt.backend === "webgpu" ? 1 : REPS;
    const ms = await best(() => op.run(q, k, v), reps);
    const out = await op.run(q, k, v);
    const density = sparsity === undefined
      ? undefined
      : (await (op as unknown as { lastMask(): Promise<{ density: number }> }).lastMask())
        .density;
    return { ms, out, density };
  } finally {
    op.dispose();
  }
}

async function onnx(
  c: Case,
  graph: "mha" | "matmul",
  threads: number,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
): Promise<{ ms: number; out: Float32Array }> {
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
  const model = graph === "mha"
    ? mhaModel(1, c.tokens, c.heads, c.headDim)
    : matmulModel(c.tokens, c.heads, c.headDim);
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  try {
    const dims = graph === "mha"
      ? [1, c.tokens, c.heads * c.headDim]
      : [1, c.tokens, c.heads, c.headDim];
    const feeds = {
      q: new ort.Tensor("float32", q, dims),
      k: new ort.Tensor("float32", k, dims),
      v: new ort.Tensor("float32", v, dims),
    };
    let out: Float32Array | undefined;
    const ms = await best(async () => {
      const r = await session.run(feeds);
      out = r.o.data as Float32Array;
    }, REPS);
    return { ms, out: out! };
  } finally {
    await session.release();
  }
}

const GRAPHS = {
  mha: "onnxruntime-web wasm, MultiHeadAttention op",
  matmul: "onnxruntime-web wasm, MatMul-Softmax-MatMul",
} as const;
type Graph = keyof typeof GRAPHS;

interface OrtResult {
  case: number;
  graph: Graph;
  ms: number;
  error?: string;
}

function inputsOf(c: Case): Float32Array[] {
  const n = c.tokens * c.heads * c.headDim;
  return [random(n, 1), random(n, 2), random(n, 3)];
}

/**
 * Child mode: onnxruntime-web fixes its thread count when its wasm starts (the first session),
 * so each thread count runs in a process of its own; outputs go to files for the parent.
 */
if (args["ort-threads"]) {
  const threads = Number(args["ort-threads"]);
  for (const [i, c] of CASES.entries()) {
    const [q, k, v] = inputsOf(c);
    for (const graph of Object.keys(GRAPHS) as Graph[]) {
      const result: OrtResult = { case: i, graph, ms: NaN };
      try {
        const r = await onnx(c, graph, threads, q, k, v);
        result.ms = r.ms;
        await Deno.writeFile(`${args["ort-dir"]}/${i}-${graph}.f32`, new Uint8Array(r.out.buffer));
      } catch (e) {
        const why = (e as Error).message?.split("\n")[0] ?? String(e);
        result.error = why.replace(/.*\/onnxruntime\//, "").replace(/ static void .*::/, " ")
          .slice(0, 100);
      }
      console.log(JSON.stringify(result));
    }
  }
  Deno.exit(0);
}

/** onnxruntime-web on `threads` threads in a child process: results and outputs. */
async function onnxChild(threads: number) {
  const dir = await Deno.makeTempDir({ prefix: "draftattn-peers-" });
  const flags = [
    "--reps",
    String(REPS),
    ...(args.quick ? ["--quick"] : []),
    ...(args["no-draft"] ? ["--no-draft"] : []),
  ];
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--ort-threads",
      String(threads),
      "--ort-dir",
      dir,
      ...flags,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const results = new TextDecoder().decode(child.stdout).trim().split("\n").filter((l) =>
    l.startsWith("{")
  ).map((l) => JSON.parse(l) as OrtResult);
  const outputs = new Map<string, Float32Array>();
  for (const r of results) {
    if (r.error) continue;
    const bytes = await Deno.readFile(`${dir}/${r.case}-${r.graph}.f32`);
    outputs.set(`${r.case}-${r.graph}`, new Float32Array(bytes.buffer));
  }
  await Deno.remove(dir, { recursive: true });
  return { results, outputs };
}

const load = () => Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
console.log(
  `draftattn peers: ${navigator.hardwareConcurrency} cores, ${Deno.build.arch}, ` +
    `Deno ${Deno.version.deno}, onnxruntime-web ${ort.env.versions.web}; ` +
    `best of ${REPS} runs; load average before: ${load()}`,
);

const one = await openRuntime({ backend: "wasm", threads: 1 });
const many = await openRuntime({ backend: "wasm", threads: THREADS });
let gpu: Runtime | undefined;
if (!args["no-webgpu"]) {
  try {
    gpu = await openRuntime({ backend: "webgpu" });
  } catch (e) {
    console.log(`webgpu rows skipped: ${(e as Error).message}`);
  }
}

// onnxruntime-web first, each thread count in a process of its own, nothing else running.
const ortRuns = new Map<number, Awaited<ReturnType<typeof onnxChild>>>();
for (const threads of THREADS > 1 ? [1, THREADS] : [1]) {
  ortRuns.set(threads, await onnxChild(threads));
}

const header = ["case", "implementation", "threads", "ms", "GFLOP/s", "max |diff|", "note"];
const lines: string[][] = [];
for (const [ci, c] of CASES.entries()) {
  const flops = 4 * c.heads * c.tokens * c.tokens * c.headDim;
  const [q, k, v] = inputsOf(c);
  const rows: Row[] = [];
  const base = await ours(one, c, q, k, v);
  const row = (what: string, threads: number | string, ms: number, out?: ArrayLike<number>) =>
    rows.push({
      what,
      threads,
      ms,
      gflops: flops / ms / 1e6,
      diff: out && maxDiff(out, base.out),
    });
  row("draftattn wasm dense", 1, base.ms);
  rows[0].diff = 0;
  if (THREADS > 1) {
    const r = await ours(many, c, q, k, v);
    row("draftattn wasm dense", THREADS, r.ms, r.out);
  }
  for (const graph of Object.keys(GRAPHS) as Graph[]) {
    for (const [threads, { results, outputs }] of ortRuns) {
      const r = results.find((x) => x.case === ci && x.graph === graph);
      if (r && !r.error) row(GRAPHS[graph], threads, r.ms, outputs.get(`${ci}-${graph}`));
      else {
        const note = `failed: ${r?.error ?? "no result"}`;
        rows.push({ what: GRAPHS[graph], threads, ms: NaN, gflops: NaN, diff: undefined, note });
      }
    }
  }
  if (gpu) {
    const what = `draftattn webgpu dense (${gpu.describe().adapter})`;
    try {
      const r = await ours(gpu, c, q, k, v);
      row(what, "-", r.ms, r.out);
      rows[rows.length - 1].note = "typed arrays in and out, 1 run";
    } catch (e) {
      const note = `failed: ${(e as Error).message?.split("\n")[0].slice(0, 80)}`;
      rows.push({ what, threads: "-", ms: NaN, gflops: NaN, diff: undefined, note });
    }
  }
  if (c.draft) {
    const d1 = await ours(one, c, q, k, v, 0.9);
    const draftRow = (threads: number, r: { ms: number; out: TensorArray; density?: number }) => {
      rows.push({
        what: "draftattn wasm draft, sparsity 0.9",
        threads,
        ms: r.ms,
        gflops: flops / r.ms / 1e6,
        diff: maxDiff(r.out, d1.out),
        note: `effective; density ${r.density!.toFixed(3)}; ${(base.ms / r.ms).toFixed(1)}x ` +
          `our 1-thread dense`,
      });
    };
    draftRow(1, d1);
    if (THREADS > 1) draftRow(THREADS, await ours(many, c, q, k, v, 0.9));
  }
  for (const r of rows) {
    lines.push([
      c.name,
      r.what,
      String(r.threads),
      Number.isNaN(r.ms) ? "-" : r.ms.toFixed(1),
      Number.isNaN(r.gflops) ? "-" : r.gflops.toFixed(1),
      r.diff === undefined ? "-" : r.diff.toExponential(1),
      r.note ?? "",
    ]);
  }
}
one.dispose();
many.dispose();
gpu?.dispose();

const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
const fmt = (cells: string[]) => `| ${cells.map((x, i) => x.padEnd(widths[i])).join(" | ")} |`;
console.log(fmt(header));
console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
for (const l of lines) console.log(fmt(l));
console.log(`load average after: ${load()}`);
