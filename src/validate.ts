/**
 * Option validation: turns user options into fully resolved specs, or throws a
 * `DraftAttentionError` naming the field and the value.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type {
  AttentionOptions,
  Budget,
  DenseSpec,
  DraftAttentionOptions,
  DraftSpec,
  DType,
  Estimator,
  Layout,
  MaskConfig,
  Policy,
  Precision,
  TextPosition,
} from "./types.ts";

/** Largest supported head dimension; any multiple of 4 up to it works. */
export const MAX_HEAD_DIM = 256;
/** Tokens per text tile (text rows and columns are never masked, so their tiling is free). */
export const TEXT_TILE = 128;
/** Default window `[poolH, poolW]`: 128 tokens, as in the paper. */
export const DEFAULT_POOL: readonly [number, number] = [8, 16];
/** Default sparsity of the reference. */
export const DEFAULT_SPARSITY = 0.9;

const LAYOUTS: readonly Layout[] = ["BSHD", "BHSD"];
const DTYPES: readonly DType[] = ["f32", "f16"];
const PRECISIONS: readonly Precision[] = ["f32", "f16-pv"];
const TEXT_POSITIONS: readonly TextPosition[] = ["after", "before"];
const POLICIES: readonly Policy[] = ["percentile", "rowTopK", "rowMass"];
const ESTIMATORS: readonly Estimator[] = ["draft", "sampled", "hybrid"];
const BUDGETS: readonly Budget[] = ["blocks", "tokens"];
/** Default `tau` of the rowMass policy. */
export const DEFAULT_TAU = 0.9;
/** Default query samples per block of the sampled and hybrid estimators. */
export const DEFAULT_SAMPLES = 8;
/** Most query samples per block. */
export const MAX_SAMPLES = 16;

/** Number of `g x g` entries the percentile policy keeps: `ceil((1 - sparsity) * g^2)`, >= 1.
 *
 * The product is rounded before `ceil` so that binary float error (0.1 * 100 =
 * 10.000000000000002) does not keep one entry too many.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { keepCount } from "./validate.ts";
 * assert.equal(keepCount(10, 0.9), 10);
 * assert.equal(keepCount(10, 0), 100);
 * ```
 */
export function keepCount(g: number, sparsity: number): number {
  const n = g * g;
  const k = Math.ceil((1 - sparsity) * n - n * 1e-12);
  return Math.min(n, Math.max(1, k));
}

/**
 * Entries the rowTopK policy keeps per query row: `ceil((1 - sparsity) * g)`, in `[1, g]`
 * (rounded like {@linkcode keepCount}).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rowKeepCount } from "./validate.ts";
 * assert.ok(rowKeepCount(54, 0.75) === 14 && rowKeepCount(10, 0.9) === 1);
 * ```
 */
export function rowKeepCount(g: number, sparsity: number): number {
  const k = Math.ceil((1 - sparsity) * g - g * 1e-12);
  return Math.min(g, Math.max(1, k));
}

/**
 * Video token pairs the percentile policy keeps under `budget: "tokens"`:
 * `ceil((1 - sparsity) * videoTokens^2)`, at least 1 (rounded like {@linkcode keepCount}).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pairBudget } from "./validate.ts";
 * assert.ok(pairBudget(4800, 0.9) === 2304000);
 * ```
 */
export function pairBudget(videoTokens: number, sparsity: number): number {
  const n = videoTokens * videoTokens;
  const k = Math.ceil((1 - sparsity) * n - n * 1e-12);
  return Math.min(n, Math.max(1, k));
}

/**
 * The mask configuration of a draft spec (its `mask`), resolved once here for both backends
 * (src/selection.ts has the definitions). At `sparsity = 0` every policy keeps every block,
 * which the reference policy on the draft map does at the least cost (`keep = g^2`). Fields a
 * hand-built spec (tests, benchmarks) leaves out take their defaults.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { maskConfig } from "./validate.ts";
 * const c = maskConfig({ policy: "rowMass", sparsity: 0, keep: 9 }, 3);
 * assert.ok(c.policy === "percentile" && c.estimator === "draft" && c.keep === 9);
 * ```
 */
export function maskConfig(
  spec: Pick<DraftSpec, "policy" | "sparsity" | "keep"> & Partial<Omit<DraftSpec, "mask">>,
  g: number,
): MaskConfig {
  const dense = spec.sparsity === 0;
  return {
    policy: dense ? "percentile" : spec.policy,
    estimator: dense ? "draft" : spec.estimator ?? "draft",
    keep: dense ? g * g : spec.keep,
    rowKeep: spec.rowKeep ?? rowKeepCount(g, spec.sparsity),
    tau: Math.fround(spec.tau ?? DEFAULT_TAU),
    samples: spec.samples ?? DEFAULT_SAMPLES,
    maskEvery: spec.maskEvery ?? 1,
    budget: dense ? "blocks" : spec.budget ?? "blocks",
    pairs: pairBudget((spec.frames ?? 0) * (spec.height ?? 0) * (spec.width ?? 0), spec.sparsity),
  };
}

/** Checks that `value` is an integer in `[min, max]`. */
export function positiveInt(field: string, value: unknown, min = 1, max = 2 ** 31 - 1): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    const range = max === 2 ** 31 - 1 ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`;
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be ${range}, got ${describeValue(value)}`,
    );
  }
  return value;
}

function oneOf<T extends string>(field: string, value: unknown, allowed: readonly T[], def: T): T {
  if (value === undefined) return def;
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    throw new DraftAttentionError(
      typeof value === "string" ? "UNSUPPORTED" : "INVALID_OPTION",
      field,
      `must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${
        describeValue(value)
      }`,
    );
  }
  return value as T;
}

function headDimOf(value: unknown): number {
  const d = positiveInt("headDim", value);
  if (d % 4 !== 0 || d > MAX_HEAD_DIM) {
    throw new DraftAttentionError(
      "UNSUPPORTED",
      "headDim",
      `must be a multiple of 4 up to ${MAX_HEAD_DIM}, got ${d}`,
    );
  }
  return d;
}

function scaleOf(value: unknown, headDim: number): number {
  if (value === undefined) return 1 / Math.sqrt(headDim);
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "scale",
      `must be a finite number > 0, got ${describeValue(value)}`,
    );
  }
  return value;
}

function optionsObject(options: unknown): Record<string, unknown> {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "options",
      `must be an object, got ${describeValue(options)}`,
    );
  }
  return options as Record<string, unknown>;
}

/**
 * The keys of every public options object. An unknown key is an error (`sparsty: 0.5` must not
 * silently run at the default sparsity), as in the edge handler. A new option must be added to
 * its list here.
 */
export const OPTION_KEYS = {
  /** `openRuntime()`. */
  openRuntime: ["backend", "device", "limits", "threads"],
  /** `runtime.attention()`. */
  attention: ["batch", "tokens", "heads", "headDim", "layout", "dtype", "scale", "precision"],
  /** `runtime.draftAttention()`. */
  draftAttention: [
    "model",
    "frames",
    "height",
    "width",
    "textTokens",
    "textPosition",
    "heads",
    "headDim",
    "batch",
    "layout",
    "dtype",
    "pool",
    "sparsity",
    "policy",
    "tau",
    "estimator",
    "samples",
    "maskEvery",
    "budget",
    "scale",
    "precision",
  ],
  /** `createStepSchedule()`. */
  createStepSchedule: ["steps", "denseStepFraction", "denseLayers", "denseAboveTimestep"],
  /** `generateWorkload()`. */
  generateWorkload: [
    "frames",
    "height",
    "width",
    "heads",
    "headDim",
    "textTokens",
    "textPosition",
    "batch",
    "layout",
    "dtype",
    "seed",
    "concentration",
    "scene",
  ],
  /** `StepSchedule.mode()`'s query. */
  mode: ["step", "layer", "timestep", "cross"],
  /** `denseStats()`. */
  denseStats: ["v", "onProgress"],
  /** A typed-array run's options (`op.run(q, k, v, options)`). */
  run: ["layer"],
  /** `parseNpy()`. */
  parseNpy: ["name", "dtype"],
} as const satisfies Record<string, readonly string[]>;

/**
 * Edit distance of two short strings, case-insensitive, a swap of two neighbours counting as one
 * edit (optimal string alignment), for "did you mean" hints.
 */
function distance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/**
 * Rejects an options object holding a key that `call` does not know, with `INVALID_OPTION`
 * naming the key, the closest known key when one is near (at most 2 edits, or the same letters
 * in another case) and the known keys. Keys whose value is `undefined` are skipped, as absent
 * ones are (and as the edge handler skips them).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkKeys } from "./validate.ts";
 * try {
 *   checkKeys("draftAttention", { frames: 2, sparsty: 0.5 });
 * } catch (e) {
 *   assert.ok((e as Error).message.includes('did you mean "sparsity"'));
 * }
 * ```
 */
export function checkKeys(call: keyof typeof OPTION_KEYS, options: object): void {
  const known: readonly string[] = OPTION_KEYS[call];
  let keys: string[];
  try {
    keys = Object.keys(options).filter((key) =>
      (options as Record<string, unknown>)[key] !== undefined
    );
  } catch (e) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "options",
      `cannot be read: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
  }
  for (const key of keys) {
    if (known.includes(key)) continue;
    let best = "";
    let bestDistance = 3;
    for (const k of known) {
      const d = distance(key, k);
      if (d < bestDistance) [best, bestDistance] = [k, d];
    }
    // Two edits turn any 2-letter key into any other: short keys get a hint at one edit only.
    const near = bestDistance <= (key.length > 4 ? 2 : 1);
    const hint = best && near ? ` (did you mean "${best}"?)` : "";
    throw new DraftAttentionError(
      "INVALID_OPTION",
      key,
      `is not an option of ${call}()${hint}; options: ${known.join(", ")}`,
    );
  }
}

/** Elements of one of q, k, v, out; checked against `Number.MAX_SAFE_INTEGER` overflow. */
export function tensorElements(spec: DenseSpec): number {
  return spec.batch * spec.tokens * spec.heads * spec.headDim;
}

const MAX_ELEMENTS = 2 ** 40;

function checkSize(spec: DenseSpec): void {
  if (tensorElements(spec) > MAX_ELEMENTS) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "tokens",
      `batch * tokens * heads * headDim = ${tensorElements(spec)} exceeds ${MAX_ELEMENTS}`,
    );
  }
}

/** Resolves and validates `runtime.attention()` options. */
export function resolveDense(options: AttentionOptions): DenseSpec {
  const o = optionsObject(options);
  checkKeys("attention", o);
  const headDim = headDimOf(o.headDim);
  const spec: DenseSpec = {
    batch: o.batch === undefined ? 1 : positiveInt("batch", o.batch),
    tokens: positiveInt("tokens", o.tokens),
    heads: positiveInt("heads", o.heads),
    headDim,
    layout: oneOf("layout", o.layout, LAYOUTS, "BSHD"),
    dtype: oneOf("dtype", o.dtype, DTYPES, "f32"),
    scale: scaleOf(o.scale, headDim),
    precision: oneOf("precision", o.precision, PRECISIONS, "f32"),
  };
  checkSize(spec);
  return spec;
}

/** The block-selection fields of a draft spec: policy, estimator and their parameters. */
function policyOptions(
  o: Record<string, unknown>,
  g: number,
  sparsity: number,
): Pick<
  DraftSpec,
  "policy" | "keep" | "rowKeep" | "tau" | "estimator" | "samples" | "maskEvery" | "budget"
> {
  const policy = oneOf("policy", o.policy, POLICIES, "percentile");
  const budget = oneOf("budget", o.budget, BUDGETS, "blocks");
  if (budget === "tokens" && policy === "rowTopK") {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "budget",
      `"tokens" applies to policies "percentile" and "rowMass"; policy is "${policy}"`,
    );
  }
  const estimator = oneOf("estimator", o.estimator, ESTIMATORS, "draft");
  let tau = DEFAULT_TAU;
  if (o.tau !== undefined) {
    if (policy !== "rowMass") {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        "tau",
        `applies to policy "rowMass" only; policy is "${policy}"`,
      );
    }
    if (typeof o.tau !== "number" || !(o.tau > 0 && o.tau <= 1)) {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        "tau",
        `must be a number in (0, 1], got ${describeValue(o.tau)}`,
      );
    }
    tau = o.tau;
  }
  let samples = DEFAULT_SAMPLES;
  if (o.samples !== undefined) {
    if (estimator === "draft") {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        "samples",
        `applies to estimator "sampled" or "hybrid" only; estimator is "draft"`,
      );
    }
    samples = positiveInt("samples", o.samples, 1, MAX_SAMPLES);
  }
  return {
    policy,
    keep: keepCount(g, sparsity),
    rowKeep: rowKeepCount(g, sparsity),
    tau,
    estimator,
    samples,
    maskEvery: o.maskEvery === undefined ? 1 : positiveInt("maskEvery", o.maskEvery, 1),
    budget,
  };
}

/** Resolves and validates `runtime.draftAttention()` options. */
export function resolveDraft(options: DraftAttentionOptions): DraftSpec {
  const o = optionsObject(options);
  checkKeys("draftAttention", o);
  const frames = positiveInt("frames", o.frames);
  const height = positiveInt("height", o.height);
  const width = positiveInt("width", o.width);
  const textTokens = o.textTokens === undefined ? 0 : positiveInt("textTokens", o.textTokens, 0);
  const pool = o.pool === undefined ? DEFAULT_POOL : o.pool;
  if (!Array.isArray(pool) || pool.length !== 2) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "pool",
      `must be [poolH, poolW], got ${describeValue(pool)}`,
    );
  }
  const poolH = positiveInt("pool[0]", pool[0], 1, 4096);
  const poolW = positiveInt("pool[1]", pool[1], 1, 4096);
  const sparsity = o.sparsity === undefined ? DEFAULT_SPARSITY : o.sparsity;
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "sparsity",
      `must be a number in [0, 1), got ${describeValue(sparsity)}`,
    );
  }
  const videoTokens = frames * height * width;
  const headDim = headDimOf(o.headDim);
  const g = frames * Math.ceil(height / poolH) * Math.ceil(width / poolW);
  const fields: Omit<DraftSpec, "mask"> = {
    batch: o.batch === undefined ? 1 : positiveInt("batch", o.batch),
    tokens: videoTokens + textTokens,
    heads: positiveInt("heads", o.heads),
    headDim,
    layout: oneOf("layout", o.layout, LAYOUTS, "BSHD"),
    dtype: oneOf("dtype", o.dtype, DTYPES, "f32"),
    scale: scaleOf(o.scale, headDim),
    precision: oneOf("precision", o.precision, PRECISIONS, "f32"),
    frames,
    height,
    width,
    textTokens,
    textPosition: oneOf("textPosition", o.textPosition, TEXT_POSITIONS, "after"),
    poolH,
    poolW,
    sparsity,
    ...policyOptions(o, g, sparsity),
  };
  // The mask configuration, once: both backends and all their stages read `spec.mask`.
  const spec: DraftSpec = { ...fields, mask: maskConfig(fields, g) };
  if (videoTokens > 2 ** 31 - 1 || g > 65535) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "frames",
      `frames * height * width = ${videoTokens} gives ${g} draft tokens; at most 65535 are supported`,
    );
  }
  checkSize(spec);
  return spec;
}
