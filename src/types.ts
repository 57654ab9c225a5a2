/**
 * Types shared by the public API and both backends.
 *
 * @module
 */

/** Memory layout of q, k, v and the output. */
export type Layout = "BSHD" | "BHSD";
/** Storage type of q, k, v and the output. Accumulation is always f32. */
export type DType = "f32" | "f16";
/** Where the text tokens sit on the token axis relative to the video tokens. */
export type TextPosition = "after" | "before";
/**
 * Block-selection policy (src/selection.ts has the exact definitions). `"percentile"` is the
 * reference policy of docs/spec.md: the `keep` largest entries of each (batch, head) map plus each
 * row's largest. `"rowTopK"`: each query row keeps its `ceil((1 - sparsity) * g)` largest
 * entries. `"rowMass"`: each query row keeps its largest entries until they hold `tau` of the
 * row's mass, at most as many as rowTopK keeps. Ties at a threshold are kept by every policy.
 */
export type Policy = "percentile" | "rowTopK" | "rowMass";
/**
 * Block-importance estimator the policy selects from. `"draft"` (the reference): the draft map
 * of mean-pooled q and k. `"sampled"`: exact attention of a few sampled queries per query block
 * against every key, summed per key block. `"hybrid"`: the mean of the two, both as estimated
 * block masses.
 */
export type Estimator = "draft" | "sampled" | "hybrid";

/**
 * What `sparsity` budgets. `"blocks"` (the reference): the percentile policy keeps
 * `ceil((1 - sparsity) * g^2)` blocks. `"tokens"`: it keeps the largest entries until their
 * video token pairs reach `ceil((1 - sparsity) * videoTokens^2)`, so that with ragged windows a
 * partial window costs what it holds; rowMass then keeps no entry below that threshold but the
 * row maxima and stops each row at `tau` of its mass (not rowTopK).
 */
export type Budget = "blocks" | "tokens";
/** Which backend computes. */
export type BackendKind = "webgpu" | "wasm";

/**
 * Arithmetic of attention's P V product: `"f32"` (default, the reference semantics: every
 * product and accumulator in f32) or `"f16-pv"`: for f16 inputs on a WebGPU device with
 * `shader-f16` and subgroups of 32, P (in [0, 1]) and the products with the f16 V in f16,
 * summed in f16 over each 32-key chunk and then added into the f32 accumulators; S = Q K^T, the
 * softmax statistics and the output accumulators stay f32. About 9% faster dense attention on
 * an H100 at the HunyuanVideo shape (27.8 vs 25.6 TFLOP/s), with a max error against float64
 * about twice the default's (still within an f16 ulp of the outputs). Elsewhere (f32 inputs,
 * the WebAssembly backend, other devices) the default arithmetic runs.
 */
export type Precision = "f32" | "f16-pv";

/** A typed array of the op's dtype. */
export type TensorArray = Float32Array | Float16Array;

/** Options of `runtime.attention()` (dense attention). */
export interface AttentionOptions {
  /** Batch elements; default 1. */
  batch?: number;
  /** Sequence length (query and key tokens), any integer >= 1. */
  tokens: number;
  /** Attention heads, >= 1. */
  heads: number;
  /** Channels per head: a multiple of 4, at most 256. */
  headDim: number;
  /** Memory layout of q, k, v and the output; default `"BSHD"`. */
  layout?: Layout;
  /** Storage type of q, k, v and the output; default `"f32"`. */
  dtype?: DType;
  /** Softmax scale; defaults to `1 / sqrt(headDim)`. */
  scale?: number;
  /** Arithmetic of P V; default `"f32"` (see {@linkcode Precision}). */
  precision?: Precision;
}

/** Options of `runtime.draftAttention()`. */
export interface DraftAttentionOptions {
  /**
   * A bundled model profile (`models/*.json`, e.g. `"wan2.1-t2v-1.3b-480p"`) supplying the
   * geometry, heads, headDim, pool and sparsity; explicit fields override it.
   */
  model?: string;
  /** Latent frames after patchify. */
  frames?: number;
  /** Latent height (rows) after patchify. */
  height?: number;
  /** Latent width (columns) after patchify. */
  width?: number;
  /** Text tokens (never masked) next to the video tokens; default 0. */
  textTokens?: number;
  /** Whether the text tokens come after (default) or before the video tokens. */
  textPosition?: TextPosition;
  /** Attention heads, >= 1 (required unless `model` gives it). */
  heads?: number;
  /** Channels per head: a multiple of 4, at most 256 (required unless `model` gives it). */
  headDim?: number;
  /** Batch elements; default 1. */
  batch?: number;
  /** Memory layout of q, k, v and the output; default `"BSHD"`. */
  layout?: Layout;
  /** Storage type of q, k, v and the output; default `"f32"`. */
  dtype?: DType;
  /** Window size `[poolH, poolW]` in latent tokens; default `[8, 16]`. */
  pool?: readonly [number, number];
  /** Share of video-video block pairs dropped, in `[0, 1)`; default 0.9. */
  sparsity?: number;
  /** Block-selection policy; default `"percentile"` (the reference). */
  policy?: Policy;
  /** `rowMass` only: share of each row's estimated mass to keep, in `(0, 1]`; default 0.9. */
  tau?: number;
  /** Block-importance estimator; default `"draft"` (the reference). */
  estimator?: Estimator;
  /** `sampled` and `hybrid` only: query samples per query block, 1 to 16; default 8. */
  samples?: number;
  /** What `sparsity` budgets, blocks or token pairs; default `"blocks"` (see {@linkcode Budget}). */
  budget?: Budget;
  /**
   * Recompute the block mask on every `maskEvery`-th run and reuse it on the runs in between
   * (denoising steps change the attention pattern slowly); default 1 (every run).
   */
  maskEvery?: number;
  /** Softmax scale; defaults to `1 / sqrt(headDim)`. */
  scale?: number;
  /** Arithmetic of P V; default `"f32"` (see {@linkcode Precision}). */
  precision?: Precision;
}

/** Dense attention request with every default filled in and every field validated. */
export interface DenseSpec {
  /** Batch elements. */
  batch: number;
  /** Tokens per sequence (video plus text). */
  tokens: number;
  /** Attention heads. */
  heads: number;
  /** Channels per head (a multiple of 4, at most 256). */
  headDim: number;
  /** Memory layout of q, k, v and the output. */
  layout: Layout;
  /** Storage type of q, k, v and the output. */
  dtype: DType;
  /** Softmax scale applied to `q . k`. */
  scale: number;
  /** Arithmetic of P V; absent means `"f32"`. */
  precision?: Precision;
}

/** Geometry of the video token grid: everything the token order and block tables depend on. */
export interface Geometry {
  /** Latent frames after patchify. */
  frames: number;
  /** Latent rows per frame after patchify. */
  height: number;
  /** Latent columns per frame after patchify. */
  width: number;
  /** Text tokens (never masked); 0 for none. */
  textTokens: number;
  /** Whether the text tokens come after or before the video tokens. */
  textPosition: TextPosition;
  /** Window height in latent rows (8 by default). */
  poolH: number;
  /** Window width in latent columns (16 by default). */
  poolW: number;
}

/** Draft attention request with every default filled in and every field validated. */
export interface DraftSpec extends DenseSpec, Geometry {
  /** Share of video-video block pairs dropped, in `[0, 1)`. */
  sparsity: number;
  /** Block-selection policy. */
  policy: Policy;
  /** Entries kept per (batch, head) by the percentile threshold: `keepCount(g, sparsity)`. */
  keep: number;
  /** Entries kept per query row by rowTopK (rowMass's cap): `rowKeepCount(g, sparsity)`. */
  rowKeep?: number;
  /** rowMass's share of mass (default 0.9). */
  tau?: number;
  /** Default `"draft"`. */
  estimator?: Estimator;
  /** Query samples per query block of the sampled and hybrid estimators (default 8). */
  samples?: number;
  /** Default `"blocks"`. */
  budget?: Budget;
  /** Runs per mask computation (default 1). */
  maskEvery?: number;
  /**
   * What the backends select with: the fields above resolved once, by validation, for this
   * geometry (`maskConfig` of src/validate.ts). The fields above are the options as asked; at
   * `sparsity = 0` this is the reference policy keeping every block instead.
   */
  mask: MaskConfig;
}

/**
 * A draft spec's block selection as its backends run it (`DraftSpec.mask`): policy, estimator
 * and their parameters with every default filled in.
 */
export interface MaskConfig {
  /** The policy run; `"percentile"` at `sparsity = 0`. */
  policy: Policy;
  /** The estimator run; `"draft"` at `sparsity = 0`. */
  estimator: Estimator;
  /** Entries the percentile policy keeps per (batch, head); `g^2` at `sparsity = 0`. */
  keep: number;
  /** Entries rowTopK keeps per row (rowMass's cap). */
  rowKeep: number;
  /** rowMass's `tau`, rounded to f32. */
  tau: number;
  /** Query samples per block of the sampled and hybrid estimators. */
  samples: number;
  /** Runs per mask computation. */
  maskEvery: number;
  /** What the percentile policy's `keep` counts; `"blocks"` at `sparsity = 0`. */
  budget: Budget;
  /** Budget "tokens": the video token pairs to reach, `ceil((1 - sparsity) * videoTokens^2)`. */
  pairs: number;
}

/** The block mask of the last `run()`. */
export interface MaskResult {
  /** Draft tokens (video blocks) per frame sequence: `frames * ceil(h/poolH) * ceil(w/poolW)`. */
  g: number;
  /** `[batch, heads, g, g]`, 1 where the query block attends to the key block. */
  mask: Uint8Array;
  /** Share of kept video-video block pairs, over all batch elements and heads. */
  density: number;
}

/**
 * The per-geometry plan built by the AssemblyScript planner (`src/plan.ts`). All tables are
 * exact integers and identical for both backends.
 *
 * Tiles: tiles `0 .. g-1` are the video windows in draft numbering (frame, window row, window
 * column), so tile `i` is row/column `i` of the block mask; tiles `g .. g+textTiles-1` are runs
 * of at most `TEXT_TILE` text tokens. Every tile is a contiguous range of window order.
 */
export interface Plan {
  geometry: Geometry;
  /** `videoTokens + textTokens`. */
  tokens: number;
  videoTokens: number;
  /** Windows per frame along height and width: `ceil(height/poolH)`, `ceil(width/poolW)`. */
  nh: number;
  nw: number;
  /** Video tiles (draft tokens). */
  g: number;
  textTiles: number;
  /** `g + textTiles`. */
  tiles: number;
  /** `[tokens]`: window-order position -> raster token index. */
  order: Int32Array;
  /** `[tokens]`: raster token index -> window-order position. */
  inverse: Int32Array;
  /** `[tiles]`: first window-order position of each tile. */
  tileStart: Int32Array;
  /** `[tiles]`: tokens in each tile (>= 1). */
  tileLen: Int32Array;
  /** Largest `tileLen`. */
  maxTileLen: number;
}

/** What a backend reports about itself. */
export interface BackendInfo {
  /** Which backend computes. */
  backend: BackendKind;
  /** Adapter description (WebGPU) or "WebAssembly SIMD". */
  adapter: string;
  /** Why this backend was chosen. */
  reason: string;
  /** Features in use (`shader-f16`, `subgroups`, `timestamp-query`, `simd`, ...). */
  features: string[];
  /** WebAssembly only: threads per run, the calling thread included. */
  threads?: number;
  /** Device limits that matter for planning (WebGPU only). */
  limits?: Record<string, number>;
}

/** Caller-owned GPU buffers for `op.run({ q, k, v, out })` (WebGPU only); nothing is read back. */
export interface GpuRunArgs {
  /** Queries, same bytes as the typed-array input (the op's layout and dtype). */
  q: GPUBuffer;
  /** Keys, same shape, layout and dtype as `q`. */
  k: GPUBuffer;
  /** Values, same shape, layout and dtype as `q`. */
  v: GPUBuffer;
  /** Output, written in raster order; same shape, layout and dtype as `q`. */
  out: GPUBuffer;
  /** The transformer layer this run is for (see {@linkcode RunOptions}). */
  layer?: number;
}

/** Per-run options of `op.run(q, k, v, options)`. */
export interface RunOptions {
  /**
   * The transformer layer (block index, an integer >= 0) this run is for. With `maskEvery > 1`
   * a run that would reuse a mask computed for another layer rejects with `INVALID_INPUT`
   * (field `layer`) instead of silently applying it: build one op per layer. Runs that name no
   * layer are not checked.
   */
  layer?: number;
}

/** One compiled op of a backend. Inputs are validated by the caller (src/runtime.ts). */
export interface KernelOp {
  /**
   * Typed arrays in, typed array of the same type and layout out. Reads q, k and v before it
   * returns (uploads them, or copies them when the run must wait), never later: the runtime
   * hands it the caller's arrays unchanged.
   */
  run(q: TensorArray, k: TensorArray, v: TensorArray, options?: RunOptions): Promise<TensorArray>;
  /** WebGPU only: caller-owned buffers, no readback. */
  runBuffers?(args: GpuRunArgs): Promise<void>;
  dispose(): void;
}

/** A draft-attention op of a backend. */
export interface DraftKernelOp extends KernelOp {
  /** Mask of the last run, `[batch, heads, g, g]`; reads back only when called. */
  lastMask(): Promise<MaskResult>;
}

/** What every backend implements; `src/runtime.ts` wraps it in the public API. */
export interface Backend {
  readonly kind: BackendKind;
  info(): BackendInfo;
  dense(spec: DenseSpec): KernelOp;
  draft(spec: DraftSpec, plan: Plan): DraftKernelOp;
  /**
   * Throws `TOO_LARGE` when an op of `spec` can never run here (`g` draft tokens and `tiles`
   * tiles; 0 and `ceil(tokens / 128)` for dense attention), from the sizes alone: the runtime
   * asks before it plans, since planning a huge geometry takes seconds and gigabytes.
   */
  checkSize?(spec: DenseSpec, g: number, tiles: number): void;
  dispose(): void;
}
