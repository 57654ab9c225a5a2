/**
 * Approximation quality of draft attention against dense attention: output error (relative L2,
 * cosine, PSNR), mask recall (share of the true attention mass inside the kept blocks), oracle
 * recall (the same for the best possible selection of the same size) and effective keys per
 * query.
 *
 * The dense probabilities are computed on the CPU in float64, one head at a time and four query
 * rows at a time (a full softmax row over all keys each), and folded into per-window block
 * masses on the fly, so memory stays `O(tokens * headDim + g^2)` per head: the `tokens^2` map is
 * never materialised. Window membership comes straight from the geometry (frame, row / poolH,
 * col / poolW), so nothing here depends on the planner or a backend.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type { Layout, TextPosition } from "./types.ts";
import { checkKeys, DEFAULT_POOL } from "./validate.ts";

/** The geometry and tensor shape the metrics need. A `Workload` satisfies it. */
export interface AttentionShape {
  /** Batch elements; default 1. */
  batch?: number;
  /** Attention heads. */
  heads: number;
  /** Channels per head. */
  headDim: number;
  /** Memory layout of the tensors; default `"BSHD"`. */
  layout?: Layout;
  /** Latent frames. */
  frames: number;
  /** Latent rows per frame. */
  height: number;
  /** Latent columns per frame. */
  width: number;
  /** Text tokens; default 0. */
  textTokens?: number;
  /** Whether the text tokens come after (default) or before the video tokens. */
  textPosition?: TextPosition;
  /** Window `[poolH, poolW]`; default `[8, 16]`. */
  pool?: readonly [number, number];
  /** Softmax scale; default `1/sqrt(headDim)`. */
  scale?: number;
}

interface Resolved {
  batch: number;
  heads: number;
  headDim: number;
  tokens: number;
  videoTokens: number;
  textTokens: number;
  videoOffset: number;
  g: number;
  scale: number;
  sT: number;
  sH: number;
  sB: number;
  /** `[tokens]`: window (draft numbering) of each raster token, `g` for text tokens. */
  window: Int32Array;
  /** `[g]`: tokens per window. */
  windowLen: Int32Array;
}

function resolve(shape: AttentionShape): Resolved {
  const batch = shape.batch ?? 1;
  const { heads, headDim, frames, height, width } = shape;
  const textTokens = shape.textTokens ?? 0;
  const [poolH, poolW] = shape.pool ?? DEFAULT_POOL;
  for (
    const [field, value, min] of [
      ["batch", batch, 1],
      ["heads", heads, 1],
      ["headDim", headDim, 1],
      ["frames", frames, 1],
      ["height", height, 1],
      ["width", width, 1],
      ["textTokens", textTokens, 0],
      ["pool[0]", poolH, 1],
      ["pool[1]", poolW, 1],
    ] as const
  ) {
    if (!Number.isInteger(value) || value < min) {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        field,
        `must be an integer >= ${min}, got ${describeValue(value)}`,
      );
    }
  }
  const layout = shape.layout ?? "BSHD";
  const videoTokens = frames * height * width;
  const tokens = videoTokens + textTokens;
  const videoOffset = shape.textPosition === "before" ? textTokens : 0;
  const nh = Math.ceil(height / poolH), nw = Math.ceil(width / poolW);
  const g = frames * nh * nw;
  const window = new Int32Array(tokens).fill(g);
  const windowLen = new Int32Array(g);
  for (let f = 0; f < frames; f++) {
    for (let r = 0; r < height; r++) {
      for (let c = 0; c < width; c++) {
        const w = (f * nh + Math.floor(r / poolH)) * nw + Math.floor(c / poolW);
        window[videoOffset + (f * height + r) * width + c] = w;
        windowLen[w]++;
      }
    }
  }
  return {
    batch,
    heads,
    headDim,
    tokens,
    videoTokens,
    textTokens,
    videoOffset,
    g,
    scale: shape.scale ?? 1 / Math.sqrt(headDim),
    sT: layout === "BSHD" ? heads * headDim : headDim,
    sH: layout === "BSHD" ? headDim : tokens * headDim,
    sB: tokens * heads * headDim,
    window,
    windowLen,
  };
}

function checkLength(field: string, x: ArrayLike<number>, want: number): void {
  if (!x || typeof x.length !== "number" || x.length !== want) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `must hold ${want} elements, got ${describeValue(x)}`,
    );
  }
}

/** Elements of one `[batch, tokens, heads, headDim]` tensor of `r`. */
function elements(r: Resolved): number {
  return r.batch * r.tokens * r.heads * r.headDim;
}

/** `resolve(shape)`, after which q and k must hold a tensor of that shape each. */
function resolveQk(q: ArrayLike<number>, k: ArrayLike<number>, shape: AttentionShape): Resolved {
  const r = resolve(shape);
  checkLength("q", q, elements(r));
  checkLength("k", k, elements(r));
  return r;
}

/** Copies head `(b, h)` of a tensor into a `[tokens, headDim]` float64 array times `mul`. */
function gatherHead(
  x: ArrayLike<number>,
  r: Resolved,
  b: number,
  h: number,
  mul = 1,
): Float64Array {
  const out = new Float64Array(r.tokens * r.headDim);
  for (let t = 0; t < r.tokens; t++) {
    const src = b * r.sB + t * r.sT + h * r.sH;
    const dst = t * r.headDim;
    for (let d = 0; d < r.headDim; d++) out[dst + d] = x[src + d] * mul;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output error
// ---------------------------------------------------------------------------------------------

/** Error of an approximate output against a reference output. */
export interface OutputError {
  /** `||approx - ref|| / ||ref||`. */
  relL2: number;
  /** Cosine similarity of the two outputs as flat vectors. */
  cosine: number;
  /** `10 log10(peak^2 / MSE)` with `peak = max |ref|`; `Infinity` when equal. */
  psnr: number;
  /** Largest absolute difference. */
  maxAbsError: number;
}

/**
 * Compares an output with the dense one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compareOutputs } from "./metrics.ts";
 * const e = compareOutputs(new Float32Array([3, 4]), new Float32Array([3, 3]));
 * assert.ok(Math.abs(e.relL2 - 0.2) < 1e-12);
 * ```
 */
export function compareOutputs(
  reference: ArrayLike<number>,
  approx: ArrayLike<number>,
): OutputError {
  checkLength("approx", approx, reference.length);
  let rr = 0, aa = 0, ra = 0, dd = 0, peak = 0, maxAbs = 0;
  for (let i = 0; i < reference.length; i++) {
    const r = reference[i], a = approx[i], d = a - r;
    rr += r * r;
    aa += a * a;
    ra += r * a;
    dd += d * d;
    const ar = Math.abs(r), ad = Math.abs(d);
    if (ar > peak) peak = ar;
    if (ad > maxAbs || Number.isNaN(ad)) maxAbs = ad;
  }
  const n = Math.max(1, reference.length);
  const mse = dd / n;
  return {
    relL2: rr > 0 ? Math.sqrt(dd / rr) : (dd > 0 ? Infinity : 0),
    cosine: rr > 0 && aa > 0 ? ra / Math.sqrt(rr * aa) : (rr === aa ? 1 : 0),
    psnr: mse > 0 ? 10 * Math.log10((peak * peak) / mse) : (Number.isNaN(mse) ? NaN : Infinity),
    maxAbsError: maxAbs,
  };
}

// ---------------------------------------------------------------------------------------------
// Dense probabilities, folded into blocks
// ---------------------------------------------------------------------------------------------

/** Dense attention statistics per (batch, head), from {@linkcode denseStats}. */
export interface DenseStats {
  /** Batch elements. */
  batch: number;
  /** Attention heads. */
  heads: number;
  /** Video windows (draft tokens). */
  g: number;
  /**
   * `[batch, heads, g, g]`: sum of the dense probabilities of the video query rows in window
   * `i` over the keys in window `j` (so row `i` sums to `windowLen[i]` minus its text mass).
   */
  blockMass: Float64Array;
  /** `[batch, heads, g]`: mass the video query rows of window `i` give to text keys. */
  textMass: Float64Array;
  /** `[g]`: tokens per window. */
  windowLen: Int32Array;
  /** `[batch, heads]`: mean over video query rows of `exp(row entropy)`. */
  effectiveKeys: Float64Array;
  /** Float64 dense output in the input layout, when `v` was given. */
  output?: Float64Array;
}

/** Options of {@linkcode denseStats}. */
export interface DenseStatsOptions {
  /** Values: when given, the float64 dense output is computed as well. */
  v?: ArrayLike<number>;
  /** Called after each (batch, head) with the number done and the total. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Dense attention probabilities of every video query row, folded into window-by-window block
 * masses, in float64, without materialising `tokens^2` values.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { denseStats } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2, pool: [1, 1] as const };
 * const z = new Float32Array(8);
 * const s = denseStats(z, z, shape); // all logits 0: uniform attention
 * assert.ok(s.g === 2 && s.blockMass.every((m) => m === 0.5));
 * assert.ok(Math.abs(s.effectiveKeys[0] - 2) < 1e-12);
 * ```
 */
export function denseStats(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  shape: AttentionShape,
  options: DenseStatsOptions = {},
): DenseStats {
  checkKeys("denseStats", options);
  const r = resolveQk(q, k, shape);
  if (options.v !== undefined) checkLength("v", options.v, elements(r));
  const { tokens: N, headDim: D, g } = r;
  const blockMass = new Float64Array(r.batch * r.heads * g * g);
  const textMass = new Float64Array(r.batch * r.heads * g);
  const effectiveKeys = new Float64Array(r.batch * r.heads);
  const output = options.v !== undefined ? new Float64Array(elements(r)) : undefined;
  // Rows to compute: all of them for the output, else the video rows only.
  const rows: number[] = [];
  for (let t = 0; t < N; t++) if (output || r.window[t] < g) rows.push(t);
  const s = [0, 1, 2, 3].map(() => new Float64Array(N));
  const acc = [0, 1, 2, 3].map(() => new Float64Array(g + 1));
  const o = [0, 1, 2, 3].map(() => new Float64Array(D));
  const win = r.window;

  for (let b = 0; b < r.batch; b++) {
    for (let h = 0; h < r.heads; h++) {
      const bh = b * r.heads + h;
      const Q = gatherHead(q, r, b, h, r.scale);
      const K = gatherHead(k, r, b, h);
      const V = output ? gatherHead(options.v!, r, b, h) : undefined;
      let entropySum = 0;
      for (let i0 = 0; i0 < rows.length; i0 += 4) {
        // Four query rows at once share each key load (~25% faster in V8 than one row).
        const nr = Math.min(4, rows.length - i0);
        const t0 = rows[i0], t1 = rows[i0 + Math.min(1, nr - 1)];
        const t2 = rows[i0 + Math.min(2, nr - 1)], t3 = rows[i0 + Math.min(3, nr - 1)];
        const q0 = t0 * D, q1 = t1 * D, q2 = t2 * D, q3 = t3 * D;
        const s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
        let m0 = -Infinity, m1 = -Infinity, m2 = -Infinity, m3 = -Infinity;
        for (let j = 0; j < N; j++) {
          const kj = j * D;
          let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (let d = 0; d < D; d++) {
            const kv = K[kj + d];
            a0 += Q[q0 + d] * kv;
            a1 += Q[q1 + d] * kv;
            a2 += Q[q2 + d] * kv;
            a3 += Q[q3 + d] * kv;
          }
          s0[j] = a0;
          s1[j] = a1;
          s2[j] = a2;
          s3[j] = a3;
          if (a0 > m0) m0 = a0;
          if (a1 > m1) m1 = a1;
          if (a2 > m2) m2 = a2;
          if (a3 > m3) m3 = a3;
        }
        const maxes = [m0, m1, m2, m3];
        for (let u = 0; u < nr; u++) {
          const t = rows[i0 + u];
          const su = s[u], au = acc[u], ou = o[u], m = maxes[u];
          au.fill(0);
          ou.fill(0);
          let z = 0, zs = 0;
          for (let j = 0; j < N; j++) {
            const e = Math.exp(su[j] - m);
            z += e;
            zs += e * su[j];
            au[win[j]] += e;
            if (V) {
              const vj = j * D;
              for (let d = 0; d < D; d++) ou[d] += e * V[vj + d];
            }
          }
          const wi = win[t];
          if (wi < g) {
            // H = -sum p log p = log Z + m - sum(p s).
            entropySum += Math.exp(Math.log(z) + m - zs / z);
            const base = (bh * g + wi) * g;
            for (let j = 0; j < g; j++) blockMass[base + j] += au[j] / z;
            textMass[bh * g + wi] += au[g] / z;
          }
          if (output) {
            const dst = b * r.sB + t * r.sT + h * r.sH;
            for (let d = 0; d < D; d++) output[dst + d] = ou[d] / z;
          }
        }
      }
      effectiveKeys[bh] = r.videoTokens > 0 ? entropySum / r.videoTokens : 0;
      options.onProgress?.(bh + 1, r.batch * r.heads);
    }
  }
  return {
    batch: r.batch,
    heads: r.heads,
    g,
    blockMass,
    textMass,
    windowLen: r.windowLen,
    effectiveKeys,
    output,
  };
}

// ---------------------------------------------------------------------------------------------
// Recall
// ---------------------------------------------------------------------------------------------

/** Recall of a block selection, per (batch, head) and summarised. */
export interface Recall {
  /** Mean over (batch, head). */
  mean: number;
  /** Smallest over (batch, head). */
  min: number;
  /** `[batch, heads]`: kept video-video mass over all video-video mass. */
  perHead: Float64Array;
  /** `[batch, heads]`: kept video-video blocks. */
  kept: Int32Array;
}

function summarise(perHead: Float64Array, kept: Int32Array): Recall {
  let sum = 0, min = Infinity;
  for (const x of perHead) {
    sum += x;
    if (x < min) min = x;
  }
  return { mean: sum / Math.max(1, perHead.length), min, perHead, kept };
}

function videoTotal(stats: DenseStats, bh: number): number {
  const g2 = stats.g * stats.g;
  let total = 0;
  for (let x = 0; x < g2; x++) total += stats.blockMass[bh * g2 + x];
  return total;
}

/**
 * Mask recall: the share of the dense probability mass of video query rows on video keys that
 * falls inside the kept blocks of `mask` (`[batch, heads, g, g]`, 1 = kept, as
 * `op.lastMask()` returns it).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { denseStats, maskRecall } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2, pool: [1, 1] as const };
 * const s = denseStats(new Float32Array(8), new Float32Array(8), shape);
 * assert.equal(maskRecall(s, new Uint8Array([1, 0, 0, 1])).mean, 0.5);
 * ```
 */
export function maskRecall(stats: DenseStats, mask: ArrayLike<number>): Recall {
  const g2 = stats.g * stats.g;
  const bhs = stats.batch * stats.heads;
  checkLength("mask", mask, bhs * g2);
  const perHead = new Float64Array(bhs);
  const kept = new Int32Array(bhs);
  for (let bh = 0; bh < bhs; bh++) {
    let inside = 0, count = 0;
    for (let x = 0; x < g2; x++) {
      if (mask[bh * g2 + x]) {
        inside += stats.blockMass[bh * g2 + x];
        count++;
      }
    }
    const total = videoTotal(stats, bh);
    perHead[bh] = total > 0 ? inside / total : 1;
    kept[bh] = count;
  }
  return summarise(perHead, kept);
}

/**
 * Oracle recall: keeping the `kept` blocks of largest true block mass per (batch, head) (a
 * number for all heads, or one per head, e.g. `maskRecall(...).kept`), the best recall any
 * selection of that size can reach.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { denseStats, oracleRecall } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2, pool: [1, 1] as const };
 * const s = denseStats(new Float32Array(8), new Float32Array(8), shape);
 * assert.equal(oracleRecall(s, 4).mean, 1);
 * ```
 */
export function oracleRecall(stats: DenseStats, kept: number | ArrayLike<number>): Recall {
  const g2 = stats.g * stats.g;
  const bhs = stats.batch * stats.heads;
  if (typeof kept !== "number") checkLength("kept", kept, bhs);
  const perHead = new Float64Array(bhs);
  const counts = new Int32Array(bhs);
  for (let bh = 0; bh < bhs; bh++) {
    const n = Math.max(0, Math.min(g2, Math.round(typeof kept === "number" ? kept : kept[bh])));
    const sorted = stats.blockMass.slice(bh * g2, (bh + 1) * g2).sort().reverse();
    let inside = 0;
    for (let x = 0; x < n; x++) inside += sorted[x];
    const total = videoTotal(stats, bh);
    perHead[bh] = total > 0 ? inside / total : 1;
    counts[bh] = n;
  }
  return summarise(perHead, counts);
}

/**
 * Token pairs a block mask keeps per (batch, head): the sum of `windowLen[i] * windowLen[j]`
 * over the kept video blocks `(i, j)`. With ragged windows, block counts and token pairs
 * disagree (a corner window holds a quarter of a full one), and the attention's cost follows
 * the token pairs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { denseStats, maskPairs } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 3, pool: [1, 2] as const };
 * const s = denseStats(new Float32Array(12), new Float32Array(12), shape); // windows of 2 and 1
 * assert.ok(maskPairs(s, new Uint8Array([1, 1, 0, 1]))[0] === 4 + 2 + 1);
 * ```
 */
export function maskPairs(stats: DenseStats, mask: ArrayLike<number>): Float64Array {
  const { g, windowLen } = stats;
  const g2 = g * g;
  const bhs = stats.batch * stats.heads;
  checkLength("mask", mask, bhs * g2);
  const out = new Float64Array(bhs);
  for (let bh = 0; bh < bhs; bh++) {
    let n = 0;
    for (let i = 0; i < g; i++) {
      for (let j = 0; j < g; j++) if (mask[bh * g2 + i * g + j]) n += windowLen[i] * windowLen[j];
    }
    out[bh] = n;
  }
  return out;
}

/**
 * Oracle recall at equal token pairs: the most true mass any selection of at most `pairs` video
 * token pairs per (batch, head) can keep (one number for all heads, or one per head, e.g.
 * `maskPairs(stats, mask)`). Blocks are taken by true mass per token pair, the last one in part
 * (the fractional-knapsack bound), so this is an upper bound on every block selection of that
 * cost; with equal windows and whole blocks it is the top blocks by true mass. `kept` counts the
 * blocks taken whole.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { denseStats, oracleRecallAtPairs } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2, pool: [1, 1] as const };
 * const s = denseStats(new Float32Array(8), new Float32Array(8), shape);
 * assert.ok(oracleRecallAtPairs(s, 3).mean === 0.75);
 * ```
 */
export function oracleRecallAtPairs(
  stats: DenseStats,
  pairs: number | ArrayLike<number>,
): Recall {
  const { g, windowLen } = stats;
  const g2 = g * g;
  const bhs = stats.batch * stats.heads;
  if (typeof pairs !== "number") checkLength("pairs", pairs, bhs);
  const perHead = new Float64Array(bhs);
  const counts = new Int32Array(bhs);
  const size = new Float64Array(g2);
  for (let i = 0; i < g; i++) {
    for (let j = 0; j < g; j++) size[i * g + j] = windowLen[i] * windowLen[j];
  }
  const idx = new Int32Array(g2);
  for (let bh = 0; bh < bhs; bh++) {
    const m = stats.blockMass.subarray(bh * g2, (bh + 1) * g2);
    for (let x = 0; x < g2; x++) idx[x] = x;
    idx.sort((a, b) => m[b] / size[b] - m[a] / size[a] || a - b);
    let left = Math.max(0, typeof pairs === "number" ? pairs : pairs[bh]);
    let inside = 0, n = 0;
    for (let x = 0; x < g2 && left > 0; x++) {
      const e = idx[x];
      const take = Math.min(1, left / size[e]);
      inside += take * m[e];
      left -= take * size[e];
      if (take === 1) n++;
    }
    const total = videoTotal(stats, bh);
    perHead[bh] = total > 0 ? inside / total : 1;
    counts[bh] = n;
  }
  return summarise(perHead, counts);
}

// ---------------------------------------------------------------------------------------------
// Effective keys and the draft map
// ---------------------------------------------------------------------------------------------

/** Options of {@linkcode effectiveKeys}. */
export interface EffectiveKeysOptions {
  /** Video query rows sampled per (batch, head); default 256 (all rows when fewer). */
  samples?: number;
  /** Seed of the sample; default 1. */
  seed?: number;
}

/**
 * Effective keys per query, `exp(entropy)` of the dense softmax row, averaged over a sample of
 * video query rows and over (batch, head). `1` is one-hot attention; `tokens` is uniform.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { effectiveKeys } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 1, height: 2, width: 3 };
 * assert.ok(Math.abs(effectiveKeys(new Float32Array(24), new Float32Array(24), shape) - 6) < 1e-9);
 * ```
 */
export function effectiveKeys(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  shape: AttentionShape,
  options: EffectiveKeysOptions = {},
): number {
  const r = resolveQk(q, k, shape);
  const samples = Math.min(options.samples ?? 256, r.videoTokens);
  // A deterministic stride sample of video rows (a fixed odd step modulo the count).
  let seed = (options.seed ?? 1) >>> 0;
  const rows: number[] = [];
  const step = Math.max(1, Math.floor(r.videoTokens / samples));
  seed = (Math.imul(seed, 2654435761) >>> 0) % step;
  for (let i = 0; i < samples; i++) rows.push(r.videoOffset + ((seed + i * step) % r.videoTokens));
  const { tokens: N, headDim: D } = r;
  const s = new Float64Array(N);
  let sum = 0;
  for (let b = 0; b < r.batch; b++) {
    for (let h = 0; h < r.heads; h++) {
      const Q = gatherHead(q, r, b, h, r.scale);
      const K = gatherHead(k, r, b, h);
      for (const t of rows) {
        let m = -Infinity;
        for (let j = 0; j < N; j++) {
          let a = 0;
          for (let d = 0; d < D; d++) a += Q[t * D + d] * K[j * D + d];
          s[j] = a;
          if (a > m) m = a;
        }
        let z = 0, zs = 0;
        for (let j = 0; j < N; j++) {
          const e = Math.exp(s[j] - m);
          z += e;
          zs += e * s[j];
        }
        sum += Math.exp(Math.log(z) + m - zs / z);
      }
    }
  }
  return sum / (r.batch * r.heads * rows.length);
}

/**
 * The draft map `P = softmax(Qd Kd^T * scale)` per (batch, head), `[batch, heads, g, g]`, in
 * float64 (window means of q and k, row softmax): what the operator selects blocks from.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { draftMap } from "./metrics.ts";
 * const shape = { heads: 1, headDim: 4, frames: 2, height: 1, width: 1, pool: [1, 1] as const };
 * const p = draftMap(new Float32Array(8), new Float32Array(8), shape);
 * assert.ok(p.length === 4 && p.every((x) => x === 0.5));
 * ```
 */
export function draftMap(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  shape: AttentionShape,
): Float64Array {
  const r = resolveQk(q, k, shape);
  const { g, headDim: D } = r;
  const out = new Float64Array(r.batch * r.heads * g * g);
  const qd = new Float64Array(g * D), kd = new Float64Array(g * D);
  for (let b = 0; b < r.batch; b++) {
    for (let h = 0; h < r.heads; h++) {
      qd.fill(0);
      kd.fill(0);
      for (let t = 0; t < r.tokens; t++) {
        const w = r.window[t];
        if (w >= g) continue;
        const src = b * r.sB + t * r.sT + h * r.sH;
        for (let d = 0; d < D; d++) {
          qd[w * D + d] += q[src + d] / r.windowLen[w];
          kd[w * D + d] += k[src + d] / r.windowLen[w];
        }
      }
      const base = (b * r.heads + h) * g * g;
      for (let i = 0; i < g; i++) {
        let m = -Infinity;
        for (let j = 0; j < g; j++) {
          let a = 0;
          for (let d = 0; d < D; d++) a += qd[i * D + d] * kd[j * D + d];
          out[base + i * g + j] = a * r.scale;
          if (a * r.scale > m) m = a * r.scale;
        }
        let z = 0;
        for (let j = 0; j < g; j++) {
          const e = Math.exp(out[base + i * g + j] - m);
          out[base + i * g + j] = e;
          z += e;
        }
        for (let j = 0; j < g; j++) out[base + i * g + j] /= z;
      }
    }
  }
  return out;
}
