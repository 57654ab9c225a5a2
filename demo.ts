/**
 * `deno task demo`: draft attention against dense attention on a video-like workload.
 *
 * Opens a runtime (WebGPU on a hardware adapter, else WebAssembly), generates a seeded
 * video-attention workload (src/workload.ts: a moving textured scene, patch-embedded, projected
 * to q, k, v per head with 3D RoPE), runs dense attention and draft attention at a few
 * sparsities, and prints time, speedup and quality: relative L2 error, PSNR and cosine of the
 * output against dense, mask recall (share of the true attention mass inside the kept blocks)
 * and oracle recall (the best any selection of as many blocks could keep). The true block masses
 * come from a float64 CPU pass over every query row (src/metrics.ts).
 *
 * Progress goes to stderr; the table (or, with `--json`, one JSON object) to stdout. `--png DIR`
 * writes pictures: the scene, the draft map and kept blocks of a few heads, and per-frame error
 * maps. Run with `--help` for the flags.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { deflateSync } from "node:zlib";
import { openRuntime } from "./mod.ts";
import type { DraftAttentionOp, Runtime } from "./src/runtime.ts";
import { getModel, MODELS } from "./src/models.ts";
import { buildPlan } from "./src/plan.ts";
import { sampleTable } from "./src/policy.ts";
import {
  compareOutputs,
  type DenseStats,
  denseStats,
  draftMap,
  maskPairs,
  maskRecall,
  oracleRecall,
  oracleRecallAtPairs,
  type OutputError,
} from "./src/metrics.ts";
import {
  CONCENTRATION_LEVELS,
  DEFAULT_GEOMETRY,
  generateWorkload,
  headArchetype,
  LATENT_CHANNELS,
  PHOTO_REGIMES,
  QUICK_GEOMETRY,
  resolveConcentration,
  type Workload,
} from "./src/workload.ts";
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
} from "./src/types.ts";
import { DEFAULT_POOL, DEFAULT_SAMPLES, DEFAULT_TAU, MAX_SAMPLES } from "./src/validate.ts";

const DEFAULT_SPARSITIES = [0.5, 0.75, 0.9];
/** Mask reuse assumed for the amortised cost column unless `--mask-every` says otherwise. */
const DEFAULT_MASK_EVERY = 10;
const POLICY_NAMES: readonly Policy[] = ["percentile", "rowTopK", "rowMass"];
const ESTIMATOR_NAMES: readonly Estimator[] = ["draft", "sampled", "hybrid"];
/** `--policies all`: the reference, then every policy on the draft map and the sampled map. */
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
  "percentile/sampled/8/tokens",
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

/** One row of the result table. */
/** One block selection of `--policies`. */
interface Variant {
  policy: Policy;
  estimator: Estimator;
  /** Samples of this variant (else `--samples`). */
  samples?: number;
  budget?: Budget;
}

export interface DemoRow {
  sparsity: number;
  policy: Policy;
  estimator: Estimator;
  /** Query samples per block (sampled and hybrid estimators), else null. */
  samples: number | null;
  /** What sparsity budgets: blocks (the reference) or video token pairs. */
  budget: Budget;
  /** Kept video token pairs / all video token pairs, mean over (batch, head). */
  pairs: number | null;
  /** Kept video block pairs / all, over batch and heads. */
  density: number;
  /** Median time of a run that computes its mask, ms. */
  ms: number;
  /** Median time of a run that reuses its mask (`maskEvery`): the sparse attention alone, ms. */
  attentionMs: number;
  /** Mask cost over the sparse attention alone, `ms / attentionMs - 1`, mask every run. */
  maskCost: number;
  /** The same amortised over `maskEvery` runs (one computes the mask, the others reuse it). */
  amortisedCost: number;
  /** Dense time / this time. */
  speedup: number;
  relL2: number;
  cosine: number;
  /** dB; `null` in JSON when the outputs are identical (infinite). */
  psnr: number;
  maxAbsError: number;
  /** Mask recall, mean and worst over (batch, head); `null` with `--no-reference`. */
  recall: number | null;
  recallMin: number | null;
  /**
   * Oracle recall at the same kept video token pairs per (batch, head) (`oracleRecallAtPairs`):
   * with ragged windows a block count flatters selections of full windows, token pairs do not.
   */
  oracleRecall: number | null;
  /** Oracle recall at the same number of kept blocks (the comparison before token pairs). */
  oracleRecallBlocks: number | null;
  /** `recall / oracleRecall` (means). */
  recallRatio: number | null;
  oracleRecallMin: number | null;
  /** `[batch * heads]` mask and oracle recall per head. */
  recallPerHead: number[] | null;
  oracleRecallPerHead: number[] | null;
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
          if (r === "tokens" && policy === "percentile") v.budget = "tokens";
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

/** Runs per timing sample on the GPU: queued back to back, then one wait for the queue. */
const GPU_REPS = 4;

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

/** The demo's result: what `--json` prints. */
export interface DemoResult {
  backend: string;
  adapter: string;
  reason: string;
  features: string[];
  workload: {
    model: string | null;
    scale: number;
    frames: number;
    height: number;
    width: number;
    textTokens: number;
    textPosition: TextPosition;
    pool: [number, number];
    batch: number;
    heads: number;
    headDim: number;
    dtype: DType;
    layout: Layout;
    tokens: number;
    g: number;
    concentration: number;
    /** `--scene`: what the workload renders. */
    scene: "shapes" | "photo";
    seed: number;
    /**
     * Sampled query rows of the sampled estimator over all query rows: its share of dense
     * attention's `QK^T` work (null when no variant samples).
     */
    sampledQueryShare: number | null;
    /** Runs per mask computation assumed by `amortisedCost`. */
    maskEvery: number;
    /** Mean over (batch, head) of the mean `exp(row entropy)` of the dense video rows. */
    effectiveKeys: number | null;
    effectiveKeysPerHead: number[] | null;
    archetypes: string[];
  };
  dense: { ms: number; times: number[] };
  rows: DemoRow[];
  seconds: { generate: number; reference: number; total: number };
}

/** One draft op's measurements. */
interface Draft {
  sparsity: number;
  policy: Policy;
  estimator: Estimator;
  samples: number | null;
  budget: Budget;
  /** For file names: the sparsity, plus the variant unless it is the reference. */
  label: string;
  out: TensorArray;
  ms: number;
  attentionMs: number;
  mask: Uint8Array;
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

/** `policy/estimator[/samples][/tokens]`, as `--policies` takes it. */
function variantName(
  v: { policy: Policy; estimator: Estimator; samples: number | null; budget: Budget },
): string {
  return `${v.policy}/${v.estimator}${v.samples === null ? "" : `/${v.samples}`}` +
    (v.budget === "tokens" ? "/tokens" : "");
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

function pad(s: string, n: number): string {
  return s.padStart(n);
}

function effectiveKeysLine(perHead: number[] | null, archetypes: string[], tokens: number): string {
  if (perHead === null) return `          effective keys per query: not measured (--no-reference)`;
  const mean = perHead.reduce((a, b) => a + b, 0) / perHead.length;
  const heads = perHead.slice(0, 8).map((x, i) =>
    `${x.toFixed(0)} ${archetypes[i % archetypes.length]}`
  );
  return `          effective keys per query ${mean.toFixed(1)} of ${tokens} (per head: ` +
    `${heads.join(", ")}${perHead.length > 8 ? ", ..." : ""})`;
}

/** The human-readable report. */
function formatTable(r: DemoResult): string {
  const w = r.workload;
  const lines = [
    `backend   ${r.backend} (${r.adapter})`,
    `why       ${r.reason}`,
    `features  ${r.features.join(", ") || "-"}`,
    `workload  ${w.model ? `${w.model} x${+w.scale.toFixed(3)}: ` : ""}batch ${w.batch}, ` +
    `${w.frames}x${w.height}x${w.width} latent${
      w.textTokens ? ` + ${w.textTokens} text (${w.textPosition})` : ""
    } = ${w.tokens} tokens, ${w.heads} heads x ${w.headDim}, ${w.dtype} ${w.layout}`,
    `          windows ${w.pool[0]}x${
      w.pool[1]
    } -> g = ${w.g} blocks; concentration ${w.concentration}, ` +
    `seed ${w.seed}`,
    effectiveKeysLine(w.effectiveKeysPerHead, w.archetypes, w.tokens),
    ...(w.sampledQueryShare === null ? [] : [
      `          sampled estimator: ${(100 * w.sampledQueryShare).toFixed(1)}% of the query ` +
      `rows attend to every key (that share of dense QK^T work)`,
    ]),
    "",
  ];
  const header = [
    pad("sparsity", 8),
    pad("policy/estimator", 26),
    pad("density", 7),
    pad("time ms", 9),
    pad("attn ms", 9),
    pad("mask+", 7),
    pad(`mask+/${w.maskEvery}`, 8),
    pad("speedup", 7),
    pad("rel-L2", 7),
    pad("PSNR dB", 7),
    pad("recall", 6),
    pad("oracle", 6),
    pad("rec/orc", 7),
  ];
  lines.push(header.join("  "));
  lines.push(
    [
      pad("dense", 8),
      pad("-", 26),
      pad("1.000", 7),
      pad(r.dense.ms.toFixed(1), 9),
      pad("-", 9),
      pad("-", 7),
      pad("-", 8),
      pad("1.00x", 7),
      pad("-", 7),
      pad("-", 7),
      pad("-", 6),
      pad("-", 6),
      pad("-", 7),
    ].join("  "),
  );
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  for (const row of r.rows) {
    lines.push(
      [
        pad(row.sparsity.toFixed(2), 8),
        pad(variantName(row), 26),
        pad(row.density.toFixed(3), 7),
        pad(row.ms.toFixed(1), 9),
        pad(row.attentionMs.toFixed(1), 9),
        pad(pct(row.maskCost), 7),
        pad(pct(row.amortisedCost), 8),
        pad(`${row.speedup.toFixed(2)}x`, 7),
        pad(row.relL2.toFixed(4), 7),
        pad(Number.isFinite(row.psnr) ? row.psnr.toFixed(1) : "inf", 7),
        pad(row.recall?.toFixed(3) ?? "-", 6),
        pad(row.oracleRecall?.toFixed(3) ?? "-", 6),
        pad(row.recallRatio?.toFixed(3) ?? "-", 7),
      ].join("  "),
    );
  }
  lines.push(
    "",
    "time: a run that computes its mask; attn: a run that reuses it (the sparse attention alone);",
    `mask+: time / attn - 1, the mask's extra cost; mask+/${w.maskEvery}: the same amortised ` +
      `with the mask recomputed every ${w.maskEvery} runs (maskEvery).`,
    "rel-L2, PSNR (peak = max |dense|): draft output vs dense output of the same backend.",
    "recall: share of the dense attention mass (video queries -> video keys) inside the kept",
    "blocks, mean over heads; oracle: the most any selection of as many video token pairs could",
    "keep (blocks by true mass per pair); rec/orc: recall / oracle. /N: samples; /tokens: budget",
    '"tokens" (sparsity counts video token pairs instead of blocks).',
    ...(r.backend === "webgpu"
      ? [
        `webgpu times: runs on GPU buffers (no upload or readback), each sample the mean of ` +
        `${GPU_REPS} queued runs.`,
      ]
      : []),
    `times: median of ${r.dense.times.length} runs after a warm-up; float64 reference ` +
      `${r.seconds.reference.toFixed(1)} s; total ${r.seconds.total.toFixed(1)} s.`,
  );
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// PNG output
// ---------------------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** An 8-bit RGB image. */
interface Image {
  width: number;
  height: number;
  rgb: Uint8Array;
}

function newImage(width: number, height: number, gray = 32): Image {
  return { width, height, rgb: new Uint8Array(width * height * 3).fill(gray) };
}

/** Encodes an RGB image as PNG (zlib from node:zlib, no filter). */
function encodePng(img: Image): Uint8Array {
  const raw = new Uint8Array((img.width * 3 + 1) * img.height);
  for (let y = 0; y < img.height; y++) {
    raw.set(
      img.rgb.subarray(y * img.width * 3, (y + 1) * img.width * 3),
      y * (img.width * 3 + 1) + 1,
    );
  }
  const chunk = (type: string, data: Uint8Array): Uint8Array => {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13);
  const hv = new DataView(ihdr.buffer);
  hv.setUint32(0, img.width);
  hv.setUint32(4, img.height);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, no filter, no interlace
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A dark-to-bright heat colour map (black, purple, orange, yellow) for x in [0, 1]. */
function heat(x: number): [number, number, number] {
  const stops: [number, number, number][] = [
    [0, 0, 4],
    [87, 16, 110],
    [188, 55, 84],
    [249, 142, 9],
    [252, 255, 164],
  ];
  const t = Math.min(1, Math.max(0, Number.isFinite(x) ? x : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i;
  return [0, 1, 2].map((c) => Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f)) as [
    number,
    number,
    number,
  ];
}

/** Fills a `cell x cell` square at grid position (x, y) of a panel whose corner is (ox, oy). */
function fillCell(
  img: Image,
  ox: number,
  oy: number,
  x: number,
  y: number,
  cell: number,
  rgb: readonly number[],
): void {
  for (let dy = 0; dy < cell; dy++) {
    for (let dx = 0; dx < cell; dx++) {
      const p = ((oy + y * cell + dy) * img.width + ox + x * cell + dx) * 3;
      img.rgb[p] = rgb[0];
      img.rgb[p + 1] = rgb[1];
      img.rgb[p + 2] = rgb[2];
    }
  }
}

/** log10 heat of a map relative to its maximum, over `decades` decades. */
function logHeat(x: number, max: number, decades = 4): [number, number, number] {
  if (!(x > 0) || !(max > 0)) return heat(0);
  return heat(1 + Math.log10(x / max) / decades);
}

async function writePngs(
  dir: string,
  w: Workload,
  shape: Workload & { pool: [number, number] },
  stats: DenseStats,
  dense: TensorArray,
  drafts: { label: string; out: TensorArray; mask: Uint8Array }[],
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const gap = 2;
  // Scene: batch 0, frames side by side, a fixed projection of the latent channels to RGB.
  {
    const ph = w.height * 2, pw = w.width * 2;
    const up = Math.max(1, Math.min(4, Math.floor(1600 / (w.frames * pw))));
    const img = newImage(w.frames * (pw * up + gap) - gap, ph * up);
    const proj = [0, 1, 2].map((c) =>
      Array.from({ length: LATENT_CHANNELS }, (_, i) => Math.sin(1.7 * i + 2.1 * c + 0.3))
    );
    const vals = new Float64Array(w.frames * ph * pw * 3);
    let lo = Infinity, hi = -Infinity;
    for (let p = 0; p < w.frames * ph * pw; p++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let i = 0; i < LATENT_CHANNELS; i++) {
          s += proj[c][i] * w.scene[p * LATENT_CHANNELS + i];
        }
        vals[p * 3 + c] = s;
        lo = Math.min(lo, s);
        hi = Math.max(hi, s);
      }
    }
    for (let f = 0; f < w.frames; f++) {
      for (let y = 0; y < ph; y++) {
        for (let x = 0; x < pw; x++) {
          const p = (f * ph + y) * pw + x;
          const rgb = [0, 1, 2].map((c) => Math.round(255 * (vals[p * 3 + c] - lo) / (hi - lo)));
          fillCell(img, f * (pw * up + gap), 0, x, y, up, rgb);
        }
      }
    }
    await Deno.writeFile(`${dir}/scene.png`, encodePng(img));
  }
  // Per head (batch 0, up to 4 heads): draft map P | true block mass | kept blocks per sparsity.
  const g = stats.g;
  const p = draftMap(w.q, w.k, shape);
  const cell = Math.max(1, Math.min(8, Math.floor(512 / g)));
  const side = g * cell;
  for (let h = 0; h < Math.min(4, w.heads); h++) {
    const panels = 2 + drafts.length;
    const img = newImage(panels * (side + gap) - gap, side);
    const base = h * g * g;
    let pMax = 0, mMax = 0;
    for (let x = 0; x < g * g; x++) {
      pMax = Math.max(pMax, p[base + x]);
      mMax = Math.max(mMax, stats.blockMass[base + x]);
    }
    for (let i = 0; i < g; i++) {
      for (let j = 0; j < g; j++) {
        fillCell(img, 0, 0, j, i, cell, logHeat(p[base + i * g + j], pMax));
        fillCell(img, side + gap, 0, j, i, cell, logHeat(stats.blockMass[base + i * g + j], mMax));
        drafts.forEach((d, n) => {
          const kept = d.mask[base + i * g + j] === 1;
          fillCell(
            img,
            (2 + n) * (side + gap),
            0,
            j,
            i,
            cell,
            kept ? [235, 235, 235] : [20, 20, 20],
          );
        });
      }
    }
    await Deno.writeFile(`${dir}/draft_head${h}.png`, encodePng(img));
  }
  // Per sparsity: |draft - dense| per token (L2 over heads and head dims), batch 0, frames side
  // by side, one colour scale for all sparsities so the pictures compare.
  const sT = w.layout === "BSHD" ? w.heads * w.headDim : w.headDim;
  const sH = w.layout === "BSHD" ? w.headDim : w.tokens * w.headDim;
  const videoOffset = w.textPosition === "before" ? w.textTokens : 0;
  const errs = drafts.map((d) => {
    const e = new Float64Array(w.frames * w.height * w.width);
    for (let t = 0; t < e.length; t++) {
      let s = 0;
      for (let h = 0; h < w.heads; h++) {
        const o = (videoOffset + t) * sT + h * sH;
        for (let x = 0; x < w.headDim; x++) s += (d.out[o + x] - dense[o + x]) ** 2;
      }
      e[t] = Math.sqrt(s);
    }
    return e;
  });
  let eMax = 0;
  for (const e of errs) for (const x of e) eMax = Math.max(eMax, x);
  const ecell = Math.max(1, Math.min(6, Math.floor(1600 / (w.frames * w.width))));
  for (const [n, d] of drafts.entries()) {
    const img = newImage(w.frames * (w.width * ecell + gap) - gap, w.height * ecell);
    for (let f = 0; f < w.frames; f++) {
      for (let y = 0; y < w.height; y++) {
        for (let x = 0; x < w.width; x++) {
          const v = errs[n][(f * w.height + y) * w.width + x];
          fillCell(img, f * (w.width * ecell + gap), 0, x, y, ecell, heat(eMax > 0 ? v / eMax : 0));
        }
      }
    }
    await Deno.writeFile(`${dir}/error_sparsity${d.label}.png`, encodePng(img));
  }
}

/** JSON with non-finite numbers as `null` (an identical output has an infinite PSNR). */
function toJson(x: unknown): string {
  return JSON.stringify(x, (_, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2);
}

async function main(argv: string[]): Promise<number> {
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

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`demo: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
