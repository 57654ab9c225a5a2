/**
 * `deno task demo` (entry: demo.ts): draft attention against dense attention on a video-like
 * workload. The table and the pictures are in demo/table.ts and demo/png.ts.
 *
 * Opens a runtime (WebGPU on a hardware adapter, else WebAssembly), generates a seeded
 * video-attention workload (src/workload.ts: a moving textured scene, patch-embedded, projected
 * to q, k, v per head with 3D RoPE), runs dense attention and draft attention at a few
 * sparsities, and prints time, speedup and quality: relative L2 error, PSNR and cosine of the
 * output against dense, mask recall (share of the true attention mass inside the kept blocks)
 * and oracle recall (the most any selection of as many video token pairs could keep). The true
 * block masses come from a float64 CPU pass over every query row (src/metrics.ts). `--scene
 * photo` renders the photo workload family instead (1/f textures, hard edges, pan and zoom).
 *
 * Progress goes to stderr; the table (or, with `--json`, one JSON object) to stdout. `--png DIR`
 * writes pictures: the scene, the draft map and kept blocks of a few heads, and per-frame error
 * maps. Run with `--help` for the flags.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../mod.ts";
import type { DraftAttentionOp, Runtime } from "../src/runtime.ts";
import { getModel, MODELS } from "../src/models.ts";
import { buildPlan } from "../src/plan.ts";
import { sampleTable } from "../src/selection.ts";
import {
  compareOutputs,
  type DenseStats,
  denseStats,
  maskPairs,
  maskRecall,
  oracleRecall,
  oracleRecallAtPairs,
  type OutputError,
} from "../src/metrics.ts";
import {
  CONCENTRATION_LEVELS,
  DEFAULT_GEOMETRY,
  generateWorkload,
  headArchetype,
  PHOTO_REGIMES,
  QUICK_GEOMETRY,
  resolveConcentration,
  type Workload,
} from "../src/workload.ts";
import type {
  BackendInfo,
  Budget,
  DType,
  Estimator,
  GpuRunArgs,
  Layout,
  Policy,
  TensorArray,
  TextPosition,
} from "../src/types.ts";
import { DEFAULT_POOL, DEFAULT_SAMPLES, DEFAULT_TAU, MAX_SAMPLES } from "../src/validate.ts";

import { type DemoResult, type DemoRow, formatTable, GPU_REPS, variantName } from "./table.ts";
import { type Draft, writePngs } from "./png.ts";

const DEFAULT_SPARSITIES = [0.5, 0.75, 0.9];
/** Mask reuse assumed for the amortised cost column unless `--mask-every` says otherwise. */
const DEFAULT_MASK_EVERY = 10;
const POLICY_NAMES: readonly Policy[] = ["percentile", "rowTopK", "rowMass"];
const ESTIMATOR_NAMES: readonly Estimator[] = ["draft", "sampled", "hybrid"];
/** `--policies all`: the reference, every policy on the draft and sampled maps, the token budget. */
const ALL_VARIANTS = [
  "percentile/draft",
  "rowTopK/draft",
  "rowMass/draft",
  "percentile/sampled",
  "rowTopK/sampled",
  "rowMass/sampled",
  "percentile/hybrid",
  "percentile/draft/tokens",
  "percentile/sampled/2/tokens",
  "percentile/hybrid/2/tokens",
  "percentile/sampled/8/tokens",
  "rowMass/hybrid/2/tokens",
];
/** `--model` without `--scale`: scale the latent grid down to about this many video tokens. */
const AUTO_SCALE_TOKENS = 4800;
/** Heads of a scaled-down profile unless `--heads` says otherwise. */
const SCALED_HEADS = 4;

const HELP = `deno task demo [options]: draft attention vs dense attention on a video-like workload

Generates a seeded video-attention workload (moving textured scene -> patch embedding -> q, k, v
with 3D RoPE), runs dense and draft attention, and prints time, speedup, output error and recall.

options:
  --quick                  CI-sized run (4x16x32 tokens, 2 heads, headDim 32, 2 timed runs)
  --json                   print one JSON object instead of the table
  --backend B              auto (default), webgpu or wasm
  --sparsity LIST          comma-separated sparsities in [0, 1) (default 0.5,0.75,0.9)
  --policies LIST          block selections to compare, as policy/estimator (policy: ${
  POLICY_NAMES.join(", ")
};
                           estimator: ${
  ESTIMATOR_NAMES.join(", ")
}), optionally /SAMPLES and /tokens
                           (budget "tokens"), comma-separated, or "all"; default
                           percentile/draft (the reference)
  --tau T                  rowMass's share of each row's mass, in (0, 1] (default ${DEFAULT_TAU})
  --samples S              query samples per block of the sampled and hybrid estimators
                           (1..${MAX_SAMPLES}, default ${DEFAULT_SAMPLES})
  --mask-every K           mask reuse assumed for the amortised mask cost (default ${DEFAULT_MASK_EVERY})
  --model NAME             a bundled profile: ${Object.keys(MODELS).join(", ")}
  --scale S                scale the profile's frames, height and width by S ("1" = full size;
                           default: down to about ${AUTO_SCALE_TOKENS} video tokens, ${SCALED_HEADS} heads)
  --frames F --height H --width W
                           latent grid after patchify (default ${DEFAULT_GEOMETRY.frames}x${DEFAULT_GEOMETRY.height}x${DEFAULT_GEOMETRY.width})
  --heads N --head-dim D   (default ${DEFAULT_GEOMETRY.heads} x ${DEFAULT_GEOMETRY.headDim})
  --text-tokens T          text tokens (default 0, or the profile's)
  --text-position P        after (default) or before
  --pool HxW               window size (default ${DEFAULT_POOL[0]}x${DEFAULT_POOL[1]})
  --batch B                batch elements, each its own scene (default 1)
  --dtype T                f32 (default) or f16
  --layout L               BSHD (default) or BHSD
  --concentration C        a number > 0 or ${
  Object.entries(CONCENTRATION_LEVELS).map(([k, v]) => `${k} (${v})`).join(", ")
}; default moderate
  --scene S                shapes (default: textured superellipses) or photo (1/f textures,
                           hard edges, pan and zoom; named concentrations then mean ${
  Object.entries(PHOTO_REGIMES).map(([k, v]) => `${k} ${v}`).join(", ")
})
  --seed N                 workload seed (default 1)
  --runs N                 timed runs per op, median reported (default 3; 2 with --quick)
  --png DIR                write PNGs: scene, draft map and kept blocks per head, error maps
  --no-reference           skip the float64 pass (recall, oracle recall and effective keys are
                           then null); it costs about tokens^2 * heads * headDim / 2e9 seconds
  --help                   this text`;

/** Everything the demo run needs, resolved from the flags. */
interface DemoConfig {
  backend: "auto" | "webgpu" | "wasm";
  json: boolean;
  model?: string;
  scale: number;
  frames: number;
  height: number;
  width: number;
  heads: number;
  headDim: number;
  textTokens: number;
  textPosition: TextPosition;
  pool: [number, number];
  batch: number;
  dtype: DType;
  layout: Layout;
  concentration: number;
  seed: number;
  sparsities: number[];
  variants: Variant[];
  scene: "shapes" | "photo";
  tau: number;
  samples: number;
  maskEvery: number;
  runs: number;
  png?: string;
  reference: boolean;
}

/** One block selection of `--policies`. */
interface Variant {
  policy: Policy;
  estimator: Estimator;
  /** Samples of this variant (else `--samples`). */
  samples?: number;
  budget?: Budget;
}

class UsageError extends Error {}

function usage(message: string): never {
  throw new UsageError(message);
}

function intFlag(name: string, value: string | undefined, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    usage(`--${name} must be an integer >= ${min}, got "${value}"`);
  }
  return n;
}

function parseConfig(argv: string[]): DemoConfig | "help" {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      help: { type: "boolean", short: "h" },
      quick: { type: "boolean" },
      json: { type: "boolean" },
      backend: { type: "string" },
      sparsity: { type: "string" },
      policies: { type: "string" },
      scene: { type: "string" },
      tau: { type: "string" },
      samples: { type: "string" },
      "mask-every": { type: "string" },
      model: { type: "string" },
      scale: { type: "string" },
      frames: { type: "string" },
      height: { type: "string" },
      width: { type: "string" },
      heads: { type: "string" },
      "head-dim": { type: "string" },
      "text-tokens": { type: "string" },
      "text-position": { type: "string" },
      pool: { type: "string" },
      batch: { type: "string" },
      dtype: { type: "string" },
      layout: { type: "string" },
      concentration: { type: "string" },
      seed: { type: "string" },
      runs: { type: "string" },
      png: { type: "string" },
      "no-reference": { type: "boolean" },
    },
  });
  if (values.help) return "help";
  const backend = values.backend ?? "auto";
  if (backend !== "auto" && backend !== "webgpu" && backend !== "wasm") {
    usage(`--backend must be auto, webgpu or wasm, got "${backend}"`);
  }
  if (values.model !== undefined && values.quick) usage("--model and --quick do not mix");
  if (values.png !== undefined && values["no-reference"]) {
    usage("--png needs the float64 reference; drop --no-reference");
  }
  // Base geometry: the profile (scaled), the quick size or the default.
  let base: Pick<
    DemoConfig,
    "frames" | "height" | "width" | "heads" | "headDim" | "textTokens" | "textPosition" | "pool"
  > = {
    ...(values.quick ? QUICK_GEOMETRY : DEFAULT_GEOMETRY),
    textTokens: 0,
    textPosition: "after",
    pool: [DEFAULT_POOL[0], DEFAULT_POOL[1]],
  };
  let scale = 1;
  if (values.scale !== undefined) {
    scale = Number(values.scale);
    if (!(scale > 0 && scale <= 1)) usage(`--scale must be in (0, 1], got "${values.scale}"`);
  }
  if (values.model !== undefined) {
    if (!Object.hasOwn(MODELS, values.model)) {
      usage(`--model "${values.model}" is not bundled; known: ${Object.keys(MODELS).join(", ")}`);
    }
    const m = getModel(values.model);
    const video = m.frames * m.height * m.width;
    if (values.scale === undefined) scale = Math.min(1, Math.cbrt(AUTO_SCALE_TOKENS / video));
    const s = (x: number) => Math.max(1, Math.round(x * scale));
    base = {
      frames: s(m.frames),
      height: s(m.height),
      width: s(m.width),
      heads: scale === 1 ? m.heads : Math.min(m.heads, SCALED_HEADS),
      headDim: m.headDim,
      textTokens: m.textTokens,
      textPosition: m.textPosition,
      pool: [m.pool[0], m.pool[1]],
    };
  } else if (scale !== 1) {
    const s = (x: number) => Math.max(1, Math.round(x * scale));
    base = { ...base, frames: s(base.frames), height: s(base.height), width: s(base.width) };
  }
  let pool = base.pool;
  if (values.pool !== undefined) {
    const m = /^(\d+)x(\d+)$/.exec(values.pool);
    if (!m || +m[1] < 1 || +m[2] < 1) usage(`--pool must be HxW like 8x16, got "${values.pool}"`);
    pool = [+m[1], +m[2]];
  }
  const sparsities = values.sparsity === undefined
    ? DEFAULT_SPARSITIES
    : values.sparsity.split(",").map((x) => {
      const s = Number(x);
      if (x.trim() === "" || !(s >= 0 && s < 1)) {
        usage(`--sparsity must list numbers in [0, 1), got "${values.sparsity}"`);
      }
      return s;
    });
  const variants =
    (values.policies === undefined
      ? ["percentile/draft"]
      : values.policies === "all"
      ? ALL_VARIANTS
      : values.policies.split(",")).map((x): Variant => {
        const [policy, estimator = "draft", ...rest] = x.trim().split("/");
        const v: Variant = { policy: policy as Policy, estimator: estimator as Estimator };
        let ok = (POLICY_NAMES as readonly string[]).includes(policy) &&
          (ESTIMATOR_NAMES as readonly string[]).includes(estimator);
        for (const r of rest) {
          const n = Number(r);
          if (r === "tokens" && policy !== "rowTopK") v.budget = "tokens";
          else if (estimator !== "draft" && Number.isInteger(n) && n >= 1 && n <= MAX_SAMPLES) {
            v.samples = n;
          } else ok = false;
        }
        if (!ok) {
          usage(
            `--policies must list policy/estimator[/samples][/tokens] or "all", ` +
              `got "${values.policies}"`,
          );
        }
        return v;
      });
  const tau = values.tau === undefined ? DEFAULT_TAU : Number(values.tau);
  if (!(tau > 0 && tau <= 1)) usage(`--tau must be in (0, 1], got "${values.tau}"`);
  const samples = intFlag("samples", values.samples) ?? DEFAULT_SAMPLES;
  if (samples > MAX_SAMPLES) usage(`--samples must be at most ${MAX_SAMPLES}, got ${samples}`);
  const textPosition = values["text-position"] ?? base.textPosition;
  if (textPosition !== "after" && textPosition !== "before") {
    usage(`--text-position must be after or before, got "${textPosition}"`);
  }
  const dtype = values.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16") usage(`--dtype must be f32 or f16, got "${dtype}"`);
  const layout = values.layout ?? "BSHD";
  if (layout !== "BSHD" && layout !== "BHSD") {
    usage(`--layout must be BSHD or BHSD, got "${layout}"`);
  }
  const scene = values.scene ?? "shapes";
  if (scene !== "shapes" && scene !== "photo") {
    usage(`--scene must be shapes or photo, got "${scene}"`);
  }
  let concentration: number;
  try {
    // A named level means the photo family's regime on the photo scene (as generateWorkload).
    concentration = scene === "photo" && values.concentration !== undefined &&
        Object.hasOwn(PHOTO_REGIMES, values.concentration)
      ? PHOTO_REGIMES[values.concentration as keyof typeof PHOTO_REGIMES]
      : resolveConcentration(values.concentration);
  } catch (e) {
    usage(`--concentration: ${(e as Error).message}`);
  }
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isSafeInteger(seed)) usage(`--seed must be an integer, got "${values.seed}"`);
  return {
    backend,
    json: values.json ?? false,
    model: values.model,
    scale,
    frames: intFlag("frames", values.frames) ?? base.frames,
    height: intFlag("height", values.height) ?? base.height,
    width: intFlag("width", values.width) ?? base.width,
    heads: intFlag("heads", values.heads) ?? base.heads,
    headDim: intFlag("head-dim", values["head-dim"]) ?? base.headDim,
    textTokens: intFlag("text-tokens", values["text-tokens"], 0) ?? base.textTokens,
    textPosition,
    pool,
    batch: intFlag("batch", values.batch) ?? 1,
    dtype,
    layout,
    concentration,
    seed,
    sparsities,
    variants,
    scene,
    tau,
    samples,
    maskEvery: intFlag("mask-every", values["mask-every"]) ?? DEFAULT_MASK_EVERY,
    runs: intFlag("runs", values.runs) ?? (values.quick ? 2 : 3),
    png: values.png,
    reference: !values["no-reference"],
  };
}

function progress(message: string): void {
  console.error(`demo: ${message}`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Something that runs on typed arrays, and on GPU buffers with the webgpu backend. */
interface Runnable {
  run(q: TensorArray, k: TensorArray, v: TensorArray): Promise<TensorArray>;
  run(buffers: GpuRunArgs): Promise<void>;
}

/**
 * WebGPU: the workload in GPU buffers, so that timed runs measure the GPU's work rather than
 * uploads and readbacks (which `run(q, k, v)` includes).
 */
interface GpuIo {
  device: GPUDevice;
  args: GpuRunArgs;
}

function gpuIo(rt: Runtime, w: Workload): GpuIo | undefined {
  const device = rt.device;
  if (!device) return undefined;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const make = (x?: TensorArray) => {
    const b = device.createBuffer({ size: Math.ceil(w.q.byteLength / 4) * 4, usage });
    if (x) device.queue.writeBuffer(b, 0, x.buffer as ArrayBuffer, x.byteOffset, x.byteLength);
    return b;
  };
  return { device, args: { q: make(w.q), k: make(w.k), v: make(w.v), out: make() } };
}

/** Milliseconds of one run: on the GPU, the mean of GPU_REPS queued runs. */
async function timeOnce(op: Runnable, w: Workload, gpu: GpuIo | undefined): Promise<number> {
  const t = performance.now();
  if (!gpu) {
    await op.run(w.q, w.k, w.v);
    return performance.now() - t;
  }
  for (let i = 0; i < GPU_REPS; i++) await op.run(gpu.args);
  await gpu.device.queue.onSubmittedWorkDone();
  return (performance.now() - t) / GPU_REPS;
}

/** One untimed warm-up run, then `runs` timed runs; returns the warm-up's output and the median. */
async function timeOp(
  op: Runnable,
  w: Workload,
  runs: number,
  gpu: GpuIo | undefined,
): Promise<{ out: TensorArray; ms: number; times: number[] }> {
  const out = await op.run(w.q, w.k, w.v);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) times.push(await timeOnce(op, w, gpu));
  return { out, ms: median(times), times };
}

/**
 * Times two ops on the same inputs, their runs interleaved (one warm-up each, then `runs` rounds
 * of one run of each) so that a load change on the machine hits both alike; returns the first
 * op's warm-up output and the median times.
 */
async function timePair(
  a: Runnable,
  b: Runnable,
  w: Workload,
  runs: number,
  gpu: GpuIo | undefined,
): Promise<{ out: TensorArray; ms: number; otherMs: number }> {
  const out = await a.run(w.q, w.k, w.v);
  await b.run(w.q, w.k, w.v);
  const ta: number[] = [], tb: number[] = [];
  for (let i = 0; i < runs; i++) {
    ta.push(await timeOnce(a, w, gpu));
    tb.push(await timeOnce(b, w, gpu));
  }
  return { out, ms: median(ta), otherMs: median(tb) };
}

/** Sampled query rows (over every batch element's tokens) / tokens; null when nothing samples. */
function sampledShare(c: DemoConfig, tokens: number): number | null {
  const sampling = c.variants.filter((v) => v.estimator !== "draft");
  if (!sampling.length) return null;
  const samples = Math.max(...sampling.map((v) => v.samples ?? c.samples));
  const plan = buildPlan({
    frames: c.frames,
    height: c.height,
    width: c.width,
    textTokens: c.textTokens,
    textPosition: c.textPosition,
    poolH: c.pool[0],
    poolW: c.pool[1],
  });
  const t = sampleTable(plan, samples);
  let rows = 0;
  for (let i = 0; i < plan.g; i++) rows += t.table[i * (samples + 1)];
  return rows / tokens;
}

/** Runs the demo and returns its result; progress goes to stderr. */
async function runDemo(c: DemoConfig, rt: Runtime): Promise<DemoResult> {
  const t0 = performance.now();
  const info: BackendInfo = rt.describe();
  const tokens = c.frames * c.height * c.width + c.textTokens;
  progress(
    `backend ${info.backend} (${info.adapter}): ${info.reason}; workload ${c.batch}x` +
      `${c.frames}x${c.height}x${c.width}${c.textTokens ? `+${c.textTokens} text` : ""} = ` +
      `${tokens} tokens, ${c.heads} heads x ${c.headDim}, concentration ${c.concentration}`,
  );
  let t = performance.now();
  const w = generateWorkload({
    frames: c.frames,
    height: c.height,
    width: c.width,
    heads: c.heads,
    headDim: c.headDim,
    textTokens: c.textTokens,
    textPosition: c.textPosition,
    batch: c.batch,
    layout: c.layout,
    dtype: c.dtype,
    seed: c.seed,
    concentration: c.concentration,
    scene: c.scene,
  });
  const generate = (performance.now() - t) / 1000;

  progress(`dense attention: 1 warm-up + ${c.runs} timed runs`);
  const denseOp = rt.attention({
    batch: c.batch,
    tokens,
    heads: c.heads,
    headDim: c.headDim,
    layout: c.layout,
    dtype: c.dtype,
  });
  const gpu = gpuIo(rt, w);
  const dense = await timeOp(denseOp, w, c.runs, gpu);
  denseOp.dispose();
  progress(`dense: ${dense.ms.toFixed(1)} ms`);

  const drafts: Draft[] = [];
  let g = 0;
  for (const sparsity of c.sparsities) {
    for (const { policy, estimator, samples: vs, budget = "blocks" } of c.variants) {
      const reference = policy === "percentile" && estimator === "draft" && budget === "blocks";
      const samples = estimator === "draft" ? null : vs ?? c.samples;
      const tag = variantName({ policy, estimator, samples, budget });
      const name = reference ? "" : ` (${tag})`;
      progress(
        `draft attention at sparsity ${sparsity}${name}: 1 warm-up + ${c.runs} timed runs, ` +
          `mask computed every run, then again with the mask reused`,
      );
      const options = {
        frames: c.frames,
        height: c.height,
        width: c.width,
        textTokens: c.textTokens,
        textPosition: c.textPosition,
        heads: c.heads,
        headDim: c.headDim,
        batch: c.batch,
        layout: c.layout,
        dtype: c.dtype,
        pool: c.pool,
        sparsity,
        policy,
        estimator,
        ...(policy === "rowMass" ? { tau: c.tau } : {}),
        ...(samples === null ? {} : { samples }),
        ...(budget === "tokens" ? { budget } : {}),
      };
      const op: DraftAttentionOp = rt.draftAttention(options);
      // Its warm-up run computes the mask; its timed runs reuse it: the sparse attention alone.
      const reuse = rt.draftAttention({ ...options, maskEvery: 2 ** 30 });
      const r = await timePair(op, reuse, w, c.runs, gpu);
      const a = { ms: r.otherMs };
      const m = await op.lastMask();
      g = m.g;
      op.dispose();
      reuse.dispose();
      const label = reference ? `${sparsity}` : `${sparsity}_${tag.replaceAll("/", "-")}`;
      drafts.push({
        sparsity,
        policy,
        estimator,
        samples,
        budget,
        label,
        out: r.out,
        ms: r.ms,
        attentionMs: a.ms,
        mask: m.mask,
      });
      progress(
        `draft ${sparsity}${name}: ${r.ms.toFixed(1)} ms, ${
          a.ms.toFixed(1)
        } ms with the mask reused`,
      );
    }
  }

  if (gpu) { for (const b of Object.values(gpu.args)) b.destroy(); }

  t = performance.now();
  const shape = { ...w, pool: c.pool };
  let stats: DenseStats | undefined;
  if (c.reference) {
    // About 2 GMAC/s in V8 for the logits, plus the exps.
    const estimate = (c.batch * c.heads * tokens * tokens * (c.headDim + 10)) / 2e9;
    progress(
      `float64 reference: dense probabilities of every video query row, per head ` +
        `(about ${Math.ceil(estimate)} s here; --no-reference skips it)`,
    );
    stats = denseStats(w.q, w.k, shape, {
      onProgress: (done, total) => {
        if (done < total) progress(`float64 reference: ${done}/${total} heads`);
      },
    });
  }
  const reference = (performance.now() - t) / 1000;

  const rows: DemoRow[] = drafts.map((d) => {
    const e: OutputError = compareOutputs(dense.out, d.out);
    const mr = stats ? maskRecall(stats, d.mask) : undefined;
    const pairs = stats ? maskPairs(stats, d.mask) : undefined;
    const or = stats && pairs ? oracleRecallAtPairs(stats, pairs) : undefined;
    const ob = stats && mr ? oracleRecall(stats, mr.kept) : undefined;
    const v = (c.frames * c.height * c.width) ** 2;
    let kept = 0;
    for (const x of d.mask) kept += x;
    const maskCost = d.ms / d.attentionMs - 1;
    return {
      sparsity: d.sparsity,
      policy: d.policy,
      estimator: d.estimator,
      samples: d.samples,
      budget: d.budget,
      pairs: pairs ? pairs.reduce((a, b) => a + b, 0) / (pairs.length * v) : null,
      density: kept / d.mask.length,
      ms: d.ms,
      attentionMs: d.attentionMs,
      maskCost,
      amortisedCost: maskCost / c.maskEvery,
      speedup: dense.ms / d.ms,
      relL2: e.relL2,
      cosine: e.cosine,
      psnr: e.psnr,
      maxAbsError: e.maxAbsError,
      recall: mr?.mean ?? null,
      recallMin: mr?.min ?? null,
      oracleRecall: or?.mean ?? null,
      oracleRecallBlocks: ob?.mean ?? null,
      recallRatio: mr && or ? mr.mean / or.mean : null,
      oracleRecallMin: or?.min ?? null,
      recallPerHead: mr ? Array.from(mr.perHead) : null,
      oracleRecallPerHead: or ? Array.from(or.perHead) : null,
    };
  });

  if (c.png && stats) {
    progress(`writing PNGs to ${c.png}`);
    await writePngs(c.png, w, shape, stats, dense.out, drafts);
  }

  const eff = stats ? Array.from(stats.effectiveKeys) : null;
  return {
    backend: info.backend,
    adapter: info.adapter,
    reason: info.reason,
    features: info.features,
    workload: {
      model: c.model ?? null,
      scale: c.scale,
      frames: c.frames,
      height: c.height,
      width: c.width,
      textTokens: c.textTokens,
      textPosition: c.textPosition,
      pool: c.pool,
      batch: c.batch,
      heads: c.heads,
      headDim: c.headDim,
      dtype: c.dtype,
      layout: c.layout,
      tokens,
      g,
      concentration: c.concentration,
      scene: c.scene,
      seed: c.seed,
      sampledQueryShare: sampledShare(c, tokens),
      maskEvery: c.maskEvery,
      effectiveKeys: eff ? eff.reduce((a, b) => a + b, 0) / eff.length : null,
      effectiveKeysPerHead: eff,
      archetypes: Array.from({ length: c.heads }, (_, h) => headArchetype(h)),
    },
    dense: { ms: dense.ms, times: dense.times },
    rows,
    seconds: { generate, reference, total: (performance.now() - t0) / 1000 },
  };
}

/** JSON with non-finite numbers as `null` (an identical output has an infinite PSNR). */
function toJson(x: unknown): string {
  return JSON.stringify(x, (_, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2);
}

/** Runs the demo with command-line `argv`; resolves the exit code. */
export async function main(argv: string[]): Promise<number> {
  let config: DemoConfig | "help";
  try {
    config = parseConfig(argv);
  } catch (e) {
    console.error(`demo: ${(e as Error).message.split("\n")[0]}\n(see --help)`);
    return 2;
  }
  if (config === "help") {
    console.log(HELP);
    return 0;
  }
  const rt = await openRuntime({ backend: config.backend });
  try {
    const result = await runDemo(config, rt);
    console.log(config.json ? toJson(result) : formatTable(result));
  } finally {
    rt.dispose();
  }
  return 0;
}
