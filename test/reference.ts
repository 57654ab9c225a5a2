/**
 * Float64 reference of draft attention, written from docs/spec.md alone: it shares no
 * code with `src/plan.ts` or the backends. The one shared definition is `keepCount()` from
 * `src/validate.ts` (the number of entries the percentile policy keeps), which is part of the
 * public contract rather than an implementation detail.
 *
 * Everything here favours obviousness over speed: token order by nested loops over frames and
 * windows, window means by summation in float64, the draft map and attention in float64 with a
 * two-pass softmax. Inputs are read at the values the caller's `Float32Array`/`Float16Array`
 * holds, so the reference answers "what would exact arithmetic give for these stored inputs".
 *
 * Also here: a seeded PRNG and input generators, naive same-precision kernels (the yardstick of
 * the tolerance rule of docs/spec.md, "Conformance") and comparison helpers.
 *
 * @module
 */
import { keepCount } from "../src/validate.ts";
import type { DType, Layout, TensorArray, TextPosition } from "../src/types.ts";

export { keepCount };

// ---------------------------------------------------------------------------------------------
// Geometry and token order
// ---------------------------------------------------------------------------------------------

/** The token grid: the same fields as `Geometry` in src/types.ts, redeclared to stay independent. */
export interface RefGeometry {
  frames: number;
  height: number;
  width: number;
  textTokens: number;
  textPosition: TextPosition;
  poolH: number;
  poolW: number;
}

/** Window order of a geometry (docs/spec.md, stage 3), with the blocks of the mask spelled out. */
export interface TokenOrder {
  /** `videoTokens + textTokens`. */
  tokens: number;
  videoTokens: number;
  /** Windows per frame along height and width. */
  nh: number;
  nw: number;
  /** Video blocks (draft tokens). */
  g: number;
  /** Window-order position -> raster token index. */
  order: Int32Array;
  /** Raster token index -> window-order position. */
  inverse: Int32Array;
  /** Raster token index -> video block, or -1 for a text token. */
  blockOf: Int32Array;
  /** Raster indices of the tokens of each video block, in window order. */
  blockTokens: Int32Array[];
  /** Raster indices of the text tokens, in order. */
  textIndices: Int32Array;
}

/** Builds the window order of `geom`: text first (before) or last (after), video window by window. */
export function tokenOrder(geom: RefGeometry): TokenOrder {
  const { frames, height, width, textTokens, textPosition, poolH, poolW } = geom;
  const videoTokens = frames * height * width;
  const tokens = videoTokens + textTokens;
  const nh = Math.ceil(height / poolH);
  const nw = Math.ceil(width / poolW);
  const g = frames * nh * nw;
  const textBase = textPosition === "before" ? 0 : videoTokens;
  const videoBase = textPosition === "before" ? textTokens : 0;
  const order = new Int32Array(tokens);
  const blockOf = new Int32Array(tokens).fill(-1);
  const blockTokens: Int32Array[] = [];
  const textIndices = new Int32Array(textTokens);
  for (let t = 0; t < textTokens; t++) textIndices[t] = textBase + t;
  let p = 0;
  if (textPosition === "before") { for (let t = 0; t < textTokens; t++) order[p++] = textBase + t; }
  for (let f = 0; f < frames; f++) {
    for (let wr = 0; wr < nh; wr++) {
      for (let wc = 0; wc < nw; wc++) {
        const members: number[] = [];
        for (let r = wr * poolH; r < Math.min(height, (wr + 1) * poolH); r++) {
          for (let c = wc * poolW; c < Math.min(width, (wc + 1) * poolW); c++) {
            const raster = videoBase + (f * height + r) * width + c;
            members.push(raster);
            blockOf[raster] = blockTokens.length;
            order[p++] = raster;
          }
        }
        blockTokens.push(Int32Array.from(members));
      }
    }
  }
  if (textPosition === "after") { for (let t = 0; t < textTokens; t++) order[p++] = textBase + t; }
  const inverse = new Int32Array(tokens);
  for (let i = 0; i < tokens; i++) inverse[order[i]] = i;
  return { tokens, videoTokens, nh, nw, g, order, inverse, blockOf, blockTokens, textIndices };
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

/** Shape and layout of q, k, v and out. */
export interface Dims {
  batch: number;
  tokens: number;
  heads: number;
  headDim: number;
  layout: Layout;
}

/** Element strides `(sB, sT, sH)` of a layout; `d` has stride 1. */
export function strides(dims: Dims): { sB: number; sT: number; sH: number } {
  const { tokens: n, heads: h, headDim: d } = dims;
  return dims.layout === "BSHD"
    ? { sB: n * h * d, sT: h * d, sH: d }
    : { sB: h * n * d, sT: d, sH: n * d };
}

/** Copies a tensor of any layout into a contiguous float64 `[batch, heads, tokens, headDim]`. */
export function toBHND(x: ArrayLike<number>, dims: Dims): Float64Array {
  const { batch: B, tokens: N, heads: H, headDim: D } = dims;
  const { sB, sT, sH } = strides(dims);
  const out = new Float64Array(B * H * N * D);
  let o = 0;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < N; t++) {
        const base = b * sB + t * sT + h * sH;
        for (let d = 0; d < D; d++) out[o++] = x[base + d];
      }
    }
  }
  return out;
}

/** Inverse of `toBHND`: writes a contiguous `[B, H, N, D]` array into `dims.layout`. */
export function fromBHND(x: Float64Array, dims: Dims): Float64Array {
  const { batch: B, tokens: N, heads: H, headDim: D } = dims;
  const { sB, sT, sH } = strides(dims);
  const out = new Float64Array(B * H * N * D);
  let o = 0;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < N; t++) {
        const base = b * sB + t * sT + h * sH;
        for (let d = 0; d < D; d++) out[base + d] = x[o++];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Stage 1: window means and draft map
// ---------------------------------------------------------------------------------------------

/** Window means `[B, H, g, D]` of a tensor: each block averages only the tokens it holds. */
export function windowMeans(x: ArrayLike<number>, dims: Dims, ord: TokenOrder): Float64Array {
  const { batch: B, heads: H, headDim: D } = dims;
  const { sB, sT, sH } = strides(dims);
  const g = ord.g;
  const out = new Float64Array(B * H * g * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < g; i++) {
        const members = ord.blockTokens[i];
        const o = ((b * H + h) * g + i) * D;
        for (const t of members) {
          const base = b * sB + t * sT + h * sH;
          for (let d = 0; d < D; d++) out[o + d] += x[base + d];
        }
        for (let d = 0; d < D; d++) out[o + d] /= members.length;
      }
    }
  }
  return out;
}

/** Draft map `P = softmax(Qd Kd^T * scale)` row-wise, `[B, H, g, g]`, from window means. */
export function draftMap(
  qd: Float64Array,
  kd: Float64Array,
  shape: { batch: number; heads: number; g: number; headDim: number; scale: number },
): Float64Array {
  const { batch: B, heads: H, g, headDim: D, scale } = shape;
  const p = new Float64Array(B * H * g * g);
  const row = new Float64Array(g);
  for (let bh = 0; bh < B * H; bh++) {
    for (let i = 0; i < g; i++) {
      const qo = (bh * g + i) * D;
      let m = -Infinity;
      for (let j = 0; j < g; j++) {
        const ko = (bh * g + j) * D;
        let s = 0;
        for (let d = 0; d < D; d++) s += qd[qo + d] * kd[ko + d];
        row[j] = s * scale;
        if (row[j] > m) m = row[j];
      }
      let z = 0;
      for (let j = 0; j < g; j++) {
        row[j] = Math.exp(row[j] - m);
        z += row[j];
      }
      const po = (bh * g + i) * g;
      for (let j = 0; j < g; j++) p[po + j] = row[j] / z;
    }
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Stage 2: block mask (percentile policy)
// ---------------------------------------------------------------------------------------------

/** Mask of one `g x g` map with the numbers that decide how safe it is to compare exactly. */
export interface BlockSelection {
  /** `g * g`, 1 = kept. */
  mask: Uint8Array;
  /** The keep-th largest entry, counting multiplicity. */
  threshold: number;
  /**
   * Smallest relative change of P that could flip an entry of the mask: the gap between the
   * threshold and the largest entry below it, and for every row the gap between its maximum and
   * its largest entry not kept by the threshold. 0 for an exact tie, Infinity when nothing can
   * flip (everything kept).
   */
  margin: number;
}

/**
 * Percentile selection of one `g x g` map: keep entries `>= threshold` (the keep-th largest,
 * ties kept) and every entry equal to its row's maximum.
 */
export function selectBlocks(p: ArrayLike<number>, g: number, keep: number): BlockSelection {
  const n = g * g;
  const sorted = Float64Array.from({ length: n }, (_, i) => p[i]).sort(); // ascending
  const threshold = sorted[n - keep];
  const below = keep < n ? sorted[n - keep - 1] : -Infinity; // largest entry under the threshold
  let margin = keep < n ? (threshold - below) / threshold : Infinity;
  const mask = new Uint8Array(n);
  for (let i = 0; i < g; i++) {
    let m = -Infinity;
    let arg = -1;
    for (let j = 0; j < g; j++) {
      if (p[i * g + j] > m) {
        m = p[i * g + j];
        arg = j;
      }
    }
    let rival = -Infinity; // largest entry of the row, other than its argmax, the threshold drops
    for (let j = 0; j < g; j++) {
      const x = p[i * g + j];
      mask[i * g + j] = x >= threshold || x === m ? 1 : 0;
      if (j !== arg && x < threshold && x > rival) rival = x;
    }
    if (rival > -Infinity) margin = Math.min(margin, (m - rival) / m);
  }
  return { mask, threshold, margin };
}

/** Full block mask `[B, H, g, g]` plus, per (batch, head), threshold and margin. */
export interface RefMask {
  g: number;
  keep: number;
  mask: Uint8Array;
  thresholds: Float64Array;
  /** Smallest margin over all (batch, head). */
  margin: number;
  /** Kept video pairs / (B * H * g * g). */
  density: number;
}

/** Applies `selectBlocks` to every (batch, head) of a draft map. */
export function blockMask(
  p: Float64Array,
  shape: { batch: number; heads: number; g: number; keep: number },
): RefMask {
  const { batch: B, heads: H, g, keep } = shape;
  const mask = new Uint8Array(B * H * g * g);
  const thresholds = new Float64Array(B * H);
  let margin = Infinity;
  let kept = 0;
  for (let bh = 0; bh < B * H; bh++) {
    const sel = selectBlocks(p.subarray(bh * g * g, (bh + 1) * g * g), g, keep);
    mask.set(sel.mask, bh * g * g);
    thresholds[bh] = sel.threshold;
    margin = Math.min(margin, sel.margin);
    for (const x of sel.mask) kept += x;
  }
  return { g, keep, mask, thresholds, margin, density: kept / mask.length };
}

// ---------------------------------------------------------------------------------------------
// Stage 4: token-level mask and attention
// ---------------------------------------------------------------------------------------------

/**
 * Keys visible to each query of one (batch, head): `keys(i)` lists raster key indices for raster
 * query `i`. Video query `i` sees video key `j` iff block(i), block(j) is kept; text rows and text
 * columns are never masked.
 */
export type KeySets = (b: number, h: number) => (query: number) => Int32Array;

/** Every key for every query. */
export function denseKeys(tokens: number): KeySets {
  const all = Int32Array.from({ length: tokens }, (_, i) => i);
  return () => () => all;
}

/** Keys allowed by a block mask `[B, H, g, g]` under a token order. */
export function maskedKeys(ord: TokenOrder, mask: Uint8Array, heads: number): KeySets {
  const g = ord.g;
  const all = Int32Array.from({ length: ord.tokens }, (_, i) => i);
  return (b, h) => {
    const base = (b * heads + h) * g * g;
    const rows: Int32Array[] = [];
    for (let i = 0; i < g; i++) {
      const keys: number[] = [];
      for (let j = 0; j < g; j++) if (mask[base + i * g + j]) keys.push(...ord.blockTokens[j]);
      keys.push(...ord.textIndices);
      rows.push(Int32Array.from(keys));
    }
    return (query) => (ord.blockOf[query] < 0 ? all : rows[ord.blockOf[query]]);
  };
}

/** Whether raster query `i` may attend to raster key `j` (one (batch, head) slice of a mask). */
export function tokenAllowed(
  ord: TokenOrder,
  mask: Uint8Array,
  at: { b: number; h: number; heads: number },
  i: number,
  j: number,
): boolean {
  const bi = ord.blockOf[i];
  const bj = ord.blockOf[j];
  if (bi < 0 || bj < 0) return true;
  const g = ord.g;
  return mask[((at.b * at.heads + at.h) * g + bi) * g + bj] === 1;
}

/** Attention problem: tensors in `dims.layout`, keys per query, softmax scale. */
export interface AttentionArgs {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  dims: Dims;
  scale: number;
  /** Defaults to dense attention. */
  keys?: KeySets;
}

/**
 * Attention in float64, two-pass softmax, output in `dims.layout`. A query without keys gets 0
 * (docs/spec.md, stage 4: no NaN).
 */
export function attentionF64(args: AttentionArgs): Float64Array {
  const { dims, scale } = args;
  const { batch: B, tokens: N, heads: H, headDim: D } = dims;
  const q = toBHND(args.q, dims), k = toBHND(args.k, dims), v = toBHND(args.v, dims);
  const keysOf = args.keys ?? denseKeys(N);
  const out = new Float64Array(B * H * N * D);
  const s = new Float64Array(N);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const base = (b * H + h) * N * D;
      const keysFor = keysOf(b, h);
      for (let i = 0; i < N; i++) {
        const keys = keysFor(i);
        if (keys.length === 0) continue;
        const qo = base + i * D;
        let m = -Infinity;
        for (let n = 0; n < keys.length; n++) {
          const ko = base + keys[n] * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * k[ko + d];
          s[n] = dot * scale;
          if (s[n] > m) m = s[n];
        }
        let z = 0;
        acc.fill(0);
        for (let n = 0; n < keys.length; n++) {
          const e = Math.exp(s[n] - m);
          z += e;
          const vo = base + keys[n] * D;
          for (let d = 0; d < D; d++) acc[d] += e * v[vo + d];
        }
        for (let d = 0; d < D; d++) out[qo + d] = acc[d] / z;
      }
    }
  }
  return fromBHND(out, dims);
}

/**
 * A naive kernel in the storage precision, the yardstick of the tolerance rule (docs/spec.md, "Conformance":
 * accept a fast kernel whose error is at most about twice a naive kernel's).
 *
 * - "f32": every product, sum, exp and quotient rounded to f32, two-pass softmax, sequential
 *   sums in key order; output rounded to f32.
 * - "f16": as "f32", and in addition the scaled scores and the probabilities are rounded to f16
 *   (the `S = QK^T`, `P = softmax(S)` fp16 matrices of an eager PyTorch kernel), output f16.
 */
export function attentionNaive(args: AttentionArgs & { precision: DType }): Float64Array {
  const { dims } = args;
  const { batch: B, tokens: N, heads: H, headDim: D } = dims;
  const fr = Math.fround;
  const low: (x: number) => number = args.precision === "f16" ? Math.f16round : fr;
  const scale = fr(args.scale);
  const q = toBHND(args.q, dims), k = toBHND(args.k, dims), v = toBHND(args.v, dims);
  const keysOf = args.keys ?? denseKeys(N);
  const out = new Float64Array(B * H * N * D);
  const s = new Float64Array(N);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const base = (b * H + h) * N * D;
      const keysFor = keysOf(b, h);
      for (let i = 0; i < N; i++) {
        const keys = keysFor(i);
        if (keys.length === 0) continue;
        const qo = base + i * D;
        let m = -Infinity;
        for (let n = 0; n < keys.length; n++) {
          const ko = base + keys[n] * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot = fr(dot + fr(q[qo + d] * k[ko + d]));
          s[n] = low(fr(dot * scale));
          if (s[n] > m) m = s[n];
        }
        let z = 0;
        for (let n = 0; n < keys.length; n++) {
          s[n] = fr(Math.exp(fr(s[n] - m)));
          z = fr(z + s[n]);
        }
        acc.fill(0);
        for (let n = 0; n < keys.length; n++) {
          const p = low(fr(s[n] / z));
          const vo = base + keys[n] * D;
          for (let d = 0; d < D; d++) acc[d] = fr(acc[d] + fr(p * v[vo + d]));
        }
        for (let d = 0; d < D; d++) out[qo + d] = low(acc[d]);
      }
    }
  }
  return fromBHND(out, dims);
}

// ---------------------------------------------------------------------------------------------
// The whole operator
// ---------------------------------------------------------------------------------------------

/** A draft-attention problem in the reference's terms. */
export interface DraftProblem {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  geometry: RefGeometry;
  batch: number;
  heads: number;
  headDim: number;
  layout: Layout;
  sparsity: number;
  /** Defaults to `1 / sqrt(headDim)`. */
  scale?: number;
}

/** Stages 1-2 of the reference: order, draft map and block mask. */
export interface DraftPlanRef {
  order: TokenOrder;
  dims: Dims;
  scale: number;
  /** `[B, H, g, g]` draft map in float64. */
  p: Float64Array;
  mask: RefMask;
}

/** Stages 1-3: token order, window means, draft map, block mask. Cheap; no attention. */
export function draftMaskRef(problem: DraftProblem): DraftPlanRef {
  const order = tokenOrder(problem.geometry);
  const dims: Dims = {
    batch: problem.batch,
    tokens: order.tokens,
    heads: problem.heads,
    headDim: problem.headDim,
    layout: problem.layout,
  };
  const scale = problem.scale ?? 1 / Math.sqrt(problem.headDim);
  const qd = windowMeans(problem.q, dims, order);
  const kd = windowMeans(problem.k, dims, order);
  const shape = { batch: dims.batch, heads: dims.heads, g: order.g, headDim: dims.headDim };
  const p = draftMap(qd, kd, { ...shape, scale });
  const keep = keepCount(order.g, problem.sparsity);
  const mask = blockMask(p, { ...shape, keep });
  return { order, dims, scale, p, mask };
}

/** The whole operator in float64: mask plus masked attention (raster order, `layout`). */
export function draftAttentionRef(problem: DraftProblem): DraftPlanRef & { out: Float64Array } {
  const plan = draftMaskRef(problem);
  const out = attentionF64({
    q: problem.q,
    k: problem.k,
    v: problem.v,
    dims: plan.dims,
    scale: plan.scale,
    keys: maskedKeys(plan.order, plan.mask.mask, problem.heads),
  });
  return { ...plan, out };
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/** Seeded PRNG (mulberry32): deterministic across runs and platforms. */
export class Rng {
  #state: number;
  #spare: number | undefined;

  constructor(seed: number) {
    this.#state = (seed >>> 0) ^ 0x9e3779b9;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.#spare !== undefined) {
      const s = this.#spare;
      this.#spare = undefined;
      return s;
    }
    const u = 1 - this.next();
    const w = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * w);
    return r * Math.cos(2 * Math.PI * w);
  }
}

/** A typed array of `dtype` with `n` elements. */
export function allocTensor(dtype: DType, n: number): TensorArray {
  return dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
}

/** q, k, v of one problem. */
export interface Inputs {
  q: TensorArray;
  k: TensorArray;
  v: TensorArray;
}

/** Independent standard normal q, k, v (times `amplitude`), stored in `dtype`. */
export function randomInputs(
  opts: Dims & { dtype: DType; seed: number; amplitude?: number },
): Inputs {
  const rng = new Rng(opts.seed);
  const n = opts.batch * opts.tokens * opts.heads * opts.headDim;
  const a = opts.amplitude ?? 1;
  const make = () => {
    const x = allocTensor(opts.dtype, n);
    for (let i = 0; i < n; i++) x[i] = a * rng.normal();
    return x;
  };
  return { q: make(), k: make(), v: make() };
}

/**
 * Inputs that look like a video model's: q and k are a smooth field over (frame, row, column)
 * plus token noise, so window means differ from window to window and the draft map spreads over
 * a few orders of magnitude (logits of order 1, far from f32 underflow); v and text tokens are
 * plain normal. Every (batch, head, dim) draws its own field, so batch elements get different
 * masks.
 */
export function videoInputs(opts: {
  geometry: RefGeometry;
  batch: number;
  heads: number;
  headDim: number;
  layout: Layout;
  dtype: DType;
  seed: number;
  /** Amplitude of the smooth part (default 1). */
  field?: number;
  /** Amplitude of the per-token noise (default 1). */
  noise?: number;
}): Inputs {
  const ord = tokenOrder(opts.geometry);
  const dims: Dims = { ...opts, tokens: ord.tokens };
  const { frames: F, height: Hh, width: W, textPosition, textTokens } = opts.geometry;
  const videoBase = textPosition === "before" ? textTokens : 0;
  const { batch: B, heads: H, headDim: D } = opts;
  const { sB, sT, sH } = strides(dims);
  const rng = new Rng(opts.seed);
  const amp = opts.field ?? 1;
  const noise = opts.noise ?? 1;
  const waves = 3;
  const smooth = () => {
    const x = allocTensor(opts.dtype, B * ord.tokens * H * D);
    for (let i = 0; i < x.length; i++) x[i] = noise * rng.normal(); // text + noise
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < D; d++) {
          // Wavelengths of at least ~2 windows in space; frames decorrelate through the phase.
          const w = Array.from({ length: waves }, () => ({
            a: (amp * Math.SQRT2 * rng.normal()) / Math.sqrt(waves),
            kf: 2 * Math.PI * rng.next(),
            kr: (2 * Math.PI * (rng.next() - 0.5)) / 16,
            kc: (2 * Math.PI * (rng.next() - 0.5)) / 24,
            phi: 2 * Math.PI * rng.next(),
          }));
          for (let f = 0; f < F; f++) {
            for (let r = 0; r < Hh; r++) {
              for (let c = 0; c < W; c++) {
                let s = 0;
                for (const u of w) s += u.a * Math.cos(u.kf * f + u.kr * r + u.kc * c + u.phi);
                const t = videoBase + (f * Hh + r) * W + c;
                const at = b * sB + t * sT + h * sH + d;
                x[at] = x[at] + s;
              }
            }
          }
        }
      }
    }
    return x;
  };
  const q = smooth();
  const k = smooth();
  const v = allocTensor(opts.dtype, q.length);
  for (let i = 0; i < v.length; i++) v[i] = rng.normal();
  return { q, k, v };
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------------------------

/** Largest `|a[i] - b[i]|` and where it is; NaN anywhere gives `err: NaN`. */
export function maxAbsErr(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
): { err: number; index: number } {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let err = 0;
  let index = -1;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= err)) {
      err = e;
      index = i;
      if (Number.isNaN(e)) return { err: NaN, index: i };
    }
  }
  return { err, index };
}

/** `||a - b|| / ||b||` (0 when both are zero). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Largest `|a[i]|`. */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Throws naming the first NaN or infinity of `a`. */
export function assertFinite(a: ArrayLike<number>, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) {
      let count = 0;
      for (let j = i; j < a.length; j++) if (!Number.isFinite(a[j])) count++;
      throw new Error(`${what}: ${count} non-finite values, first ${a[i]} at index ${i}`);
    }
  }
}

/** `(b, t, h, d)` of flat index `i` in `dims.layout`, for messages. */
export function coordsOf(i: number, dims: Dims): string {
  const { sB, sT, sH } = strides(dims);
  const b = Math.floor(i / sB);
  const t = Math.floor((i % sB) / sT) % dims.tokens;
  const h = Math.floor((i % sB) / sH) % dims.heads;
  const d = i % dims.headDim;
  return `(b=${b}, t=${t}, h=${h}, d=${d})`;
}
