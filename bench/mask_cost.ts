/**
 * `deno run -A bench/mask_cost.ts`: what a mask costs next to the sparse attention it drives,
 * per policy/estimator variant, and amortised over `maskEvery` runs.
 *
 * - WebGPU with `timestamp-query`: GPU time per stage of profiled runs (median of 3, on caller
 *   buffers, as `deno task bench` profiles); mask = pool + map + select + lists, against
 *   attention.
 * - Otherwise (WebAssembly here): wall time of runs that compute the mask against the runs that
 *   reuse it right after (`maskEvery: 2`), median of `--reps` differences.
 *
 * Prints per variant the mask's share of the sparse attention per computing run and amortised
 * over `--mask-every` runs (default 10). Inputs are seeded random values (timing only; the
 * quality of each variant is bench/quality.ts's). `--shape wan-480p|hunyuan-768p|cpu-8k`,
 * `--variants` as bench/quality.ts (`policy/estimator[/samples][/tokens]`). On WebGPU,
 * `--kernel rows` runs the sampled map with the per-key kernel (wgsl/estimate_sampled.wgsl) where
 * the tiled one (wgsl/estimate_tiled.wgsl) would run, for side-by-side numbers; `--tile
 * tm4,tn,cg,rg[,f32|f32q|f32k]` overrides the tiled kernel's register tile (`SAMPLED_TUNING.shape`);
 * `--limits default` keeps WebGPU's default limits (16 KiB workgroup memory); `--no-subgroups`
 * makes the tiled kernel reduce through workgroup memory, as on a device without subgroups.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../mod.ts";
import { buildPlan } from "../src/plan.ts";
import type { DraftAttentionOptions, DraftSpec, DType, TensorArray } from "../src/types.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { SAMPLED_TUNING } from "../src/webgpu/mask.ts";
import { type StageTimes, WebGpuOp } from "../src/webgpu/op.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "auto" },
    shape: { type: "string", default: "" },
    sparsity: { type: "string", default: "0.75,0.9" },
    variants: {
      type: "string",
      default: "percentile/draft,percentile/draft/tokens,percentile/sampled/1/tokens," +
        "percentile/sampled/2/tokens,percentile/sampled/4/tokens,percentile/sampled/8/tokens",
    },
    "mask-every": { type: "string", default: "10" },
    reps: { type: "string", default: "7" },
    threads: { type: "string", default: "" },
    dtype: { type: "string", default: "" },
    kernel: { type: "string", default: "auto" },
    limits: { type: "string", default: "adapter" },
    "no-subgroups": { type: "boolean", default: false },
    tile: { type: "string", default: "" },
  },
});

if (args.kernel !== "auto" && args.kernel !== "rows") {
  console.error(`--kernel must be auto or rows, got ${args.kernel}`);
  Deno.exit(2);
}
SAMPLED_TUNING.tiled = args.kernel === "auto";
if (args["no-subgroups"]) SAMPLED_TUNING.shape = { subgroups: false };
if (args.tile) {
  const [tm4, tn, cg, rg, f] = args.tile.split(",");
  const ok = ["f32", "f32q", "f32k", undefined];
  if (![tm4, tn, cg, rg].every((x) => /^\d+$/.test(x)) || !ok.includes(f)) {
    console.error(`--tile must be tm4,tn,cg,rg[,f32|f32q|f32k], got ${args.tile}`);
    Deno.exit(2);
  }
  SAMPLED_TUNING.shape = {
    ...SAMPLED_TUNING.shape,
    tm4: Number(tm4),
    tn: Number(tn),
    cg: Number(cg),
    rg: Number(rg),
    ...(f === "f32" || f === "f32q" ? { f16q: false } : {}),
    ...(f === "f32" || f === "f32k" ? { f16k: false } : {}),
  };
}

const SHAPES: Record<string, Partial<DraftAttentionOptions>> = {
  "wan-480p": { model: "wan2.1-t2v-1.3b-480p" },
  "hunyuan-768p": { model: "hunyuanvideo-768p" },
  "cpu-8k": { frames: 4, height: 30, width: 68, heads: 2, headDim: 64 },
};

function variant(name: string): Partial<DraftAttentionOptions> {
  const [policy, estimator, ...rest] = name.split("/");
  const o: Record<string, unknown> = { policy, estimator };
  for (const x of rest) {
    if (x === "tokens") o.budget = "tokens";
    else if (/^\d+$/.test(x)) o.samples = Number(x);
    else throw new Error(`unknown variant part "${x}" in "${name}"`);
  }
  return o as Partial<DraftAttentionOptions>;
}

const rt = await openRuntime({
  backend: args.backend as "auto" | "wasm" | "webgpu",
  ...(args.threads ? { threads: Number(args.threads) } : {}),
  limits: args.limits as "adapter" | "default",
});
if (args.limits !== "adapter" && args.limits !== "default") {
  console.error(`--limits must be adapter or default, got ${args.limits}`);
  Deno.exit(2);
}
const gpu = rt.backend === "webgpu" && rt.device?.features.has("timestamp-query");
const shapeName = args.shape || (rt.backend === "webgpu" ? "wan-480p" : "cpu-8k");
const dtype = (args.dtype || (rt.backend === "webgpu" ? "f16" : "f32")) as DType;
const every = Number(args["mask-every"]);
const reps = Number(args.reps);
console.log(
  `# ${rt.describe().backend} ${rt.describe().adapter ?? ""}; ${shapeName} ${dtype}; ` +
    `${gpu ? "GPU stage times (timestamp queries)" : "wall time, computing vs reusing runs"}`,
);

function random(n: number, seed: number): TensorArray {
  const out = dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
  let s = seed >>> 0;
  const block = new Float32Array(65521);
  for (let i = 0; i < block.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    block[i] = (s / 2 ** 32) * 2 - 1;
  }
  for (let i = 0; i < n; i += block.length) {
    out.set(block.subarray(0, Math.min(block.length, n - i)), i);
  }
  return out;
}

const probe = rt.draftAttention({ ...SHAPES[shapeName], dtype, sparsity: 0.9 });
const { batch, tokens, heads, headDim } = probe.spec;
probe.dispose();
const n = batch * tokens * heads * headDim;
const q = random(n, 1), k = random(n, 2), v = random(n, 3);
let bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer } | undefined;
if (gpu) {
  const device = rt.device!;
  const make = (data?: TensorArray) => {
    const b = device.createBuffer({
      size: n * (dtype === "f16" ? 2 : 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    });
    if (data) device.queue.writeBuffer(b, 0, data as Float32Array<ArrayBuffer>);
    return b;
  };
  bufs = { q: make(q), k: make(k), v: make(v), out: make() };
}

const median = (x: number[]) => x.sort((a, b) => a - b)[x.length >> 1];

for (const sparsity of args.sparsity.split(",").map(Number)) {
  for (const name of args.variants.split(",")) {
    const opts = { ...SHAPES[shapeName], dtype, sparsity, ...variant(name) };
    let mask: number, attention: number;
    let stages = "", kernel = "";
    if (gpu) {
      const spec: DraftSpec = rt.draftAttention(opts).spec as DraftSpec;
      const op = new WebGpuOp(new GpuContext(rt.device!), spec, buildPlan(spec), () => {});
      kernel = op.estimatorKernel ? ` [${op.estimatorKernel}]` : "";
      await op.runBuffers(bufs!);
      const runs: StageTimes[] = [];
      for (let i = 0; i < 3; i++) {
        const t = await op.profile(bufs!);
        if (t) runs.push(t);
      }
      op.dispose();
      const t = runs.sort((a, b) => a.attention - b.attention)[runs.length >> 1];
      mask = t.pool + t.map + t.select + t.lists;
      attention = t.attention;
      stages = `  (pool ${t.pool.toFixed(2)}, map ${t.map.toFixed(2)}, select ` +
        `${t.select.toFixed(2)}, lists ${t.lists.toFixed(2)} ms)`;
    } else {
      // maskEvery 2: runs alternate computing and reusing the mask; pairs of adjacent runs
      // see the same machine load (this one is shared), the median of their differences is
      // the mask's cost.
      const op = rt.draftAttention({ ...opts, maskEvery: 2 });
      const diffs: number[] = [], reusing: number[] = [];
      await op.run(q, k, v);
      await op.run(q, k, v);
      for (let r = 0; r < reps; r++) {
        let t0 = performance.now();
        await op.run(q, k, v);
        const c = performance.now() - t0;
        t0 = performance.now();
        await op.run(q, k, v);
        const u = performance.now() - t0;
        diffs.push(c - u);
        reusing.push(u);
      }
      op.dispose();
      attention = median(reusing);
      mask = median(diffs);
    }
    console.log(
      [
        sparsity.toFixed(2),
        (name + kernel).padEnd(36),
        `mask ${mask.toFixed(2)} ms`,
        `attention ${attention.toFixed(2)} ms`,
        `share ${(100 * mask / attention).toFixed(1)}%`,
        `amortised /${every} ${(100 * mask / every / attention).toFixed(1)}%`,
      ].join("  ") + stages,
    );
  }
}
for (const b of Object.values(bufs ?? {})) b.destroy();
rt.dispose();
