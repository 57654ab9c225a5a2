/**
 * Block-selection policies and block-importance estimators beyond the reference (docs/spec.md stage
 * 2), shared by both backends: the exact definitions, the per-geometry sample tables, and the
 * WebAssembly reference of the row policies that the GPU mask is tested against.
 *
 * ## Importance maps (`estimator`)
 * Every estimator yields one `g x g` f32 map per (batch, head), entries >= 0, rows summing to at
 * most 1; the policy selects from it.
 * - `"draft"` (the reference): `P = softmax(Qd Kd^T * scale)` of the window means.
 * - `"sampled"`: for video query block `i`, `n_i = min(samples, len_i)` of its queries (the
 *   positions of {@linkcode sampleTable}) attend exactly to every key (softmax over all tokens,
 *   text keys included); each sample's probability mass is summed over the keys of each video
 *   block `j` (text keys count towards no block), and
 *   `I[i][j] = len_i / (maxLen * n_i) * sum over samples of mass(j)`: the estimated true block
 *   mass of docs/spec.md's oracle (`sum over the queries of block i of their mass on block j`), divided
 *   by the constant `maxLen` (the largest video window) to keep rows <= 1. Cost: `g * samples`
 *   query rows against all `tokens` keys, about `samples / 128` of dense attention's `QK^T`.
 * - `"hybrid"`: `0.5 * (len_i / maxLen * P[i][j] + I[i][j])`, the mean of the draft map and the
 *   sampled map, both as estimated block masses (a draft row spreads the `len_i` queries of its
 *   block over the key blocks).
 * - Under `budget: "tokens"` the sampled map is a density instead, the mean sample's mass per
 *   key token: `I[i][j] = f32(1 / n_i) * sum over samples of mass(j) * f32(1 / len_j)`, and
 *   "hybrid" is `0.5 * (f32(g / videoTokens) * P[i][j] + I[i][j])`: a token budget is best spent
 *   by mass per token pair; the draft map, one pooled key per window, estimates that within a row
 *   up to the mean window size.
 * - `budget: "tokens"` (percentile and rowMass): kept(i, j) = `M[i][j] >= t` with `t` the largest
 *   value whose entries at or above it hold `pairBudget(videoTokens, sparsity)` video token pairs
 *   (`len_i * len_j` per entry), or `M[i][j]` equal to its row's maximum. rowMass under it:
 *   kept(i, j) = `M[i][j] >= max(u_i, min(t, rowMax_i))` with `u_i` its row threshold for `tau`
 *   (no rowTopK cap; masses `w(M[i][j]) * len_j`, since the map is then a density per key token): each row stops at `tau` of its estimated mass, none keeps an entry below the
 *   budget's threshold but its maximum, so the pairs go to the rows that need them (at most the
 *   budget, plus row maxima).
 *
 * ## Policies (`policy`), on a map `M`
 * - `"percentile"` (the reference): kept(i, j) = `M[i][j] >= t` with `t` the `keep`-th largest
 *   entry of the map (`keep = keepCount(g, sparsity)`), or `M[i][j]` equal to its row's maximum.
 * - `"rowTopK"`: kept(i, j) = `M[i][j] >= t_i` with `t_i` the `rowKeep`-th largest entry of row
 *   `i` (`rowKeep = rowKeepCount(g, sparsity) = ceil((1 - sparsity) * g)`), ties kept. The same
 *   budget as percentile, spread evenly over the query rows.
 * - `"rowMass"`: each row keeps its largest entries until they hold `tau` of the row's mass, and
 *   at most rowTopK's entries: kept(i, j) = `M[i][j] >= max(t_i, u_i)` with `t_i` as for rowTopK
 *   and `u_i` the largest entry `v` of row `i` whose cumulative mass `C(v) = sum of w(M[i][j'])
 *   over M[i][j'] >= v` reaches `ceil(f32(tau) * f32(Z_i))`, where `w(x) = floor(min(x, 1) *
 *   2^22)` (masses in fixed point, so that every summation order gives the same integers) and
 *   `Z_i = sum of w` over the row. The row maximum always qualifies.
 * - Every policy keeps each row's largest entry, so every query block has a key block; at
 *   `sparsity = 0` every policy keeps every block (exact dense attention) without estimating.
 *
 * All comparisons are on the f32 bit patterns (non-negative floats order like their bits), so
 * both backends select exactly the same blocks from the same map.
 *
 * ## Mask reuse (`maskEvery`)
 * The mask is computed on the first run and then on every `maskEvery`-th run; the runs in between
 * reuse it and skip pooling, estimation and selection altogether (src/_mask_schedule.ts, one
 * schedule for both backends).
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type { Plan } from "./types.ts";
import { keepCount, MAX_SAMPLES, pairBudget, rowKeepCount } from "./validate.ts";
import { AsmInstance } from "./_asm.ts";

/** Fixed-point bits of the quantised masses of rowMass: `w(x) = floor(min(x, 1) * 2^22)`. */
export const MASS_BITS = 22;

/** The exports of asm/selection.ts. */
export interface PolicyExports {
  selectRows(
    p: number,
    g: number,
    rowKeep: number,
    mass: number,
    tau: number,
    mask: number,
  ): number;
  rowMassBits(row: number, g: number, tau: number, len: number): number;
  sampledScratchBytes(tokens: number, g: number): number;
  selectMaskTokens(p: number, g: number, len: number, budget: number, mask: number): number;
  selectRowMassTokens(
    p: number,
    g: number,
    tau: number,
    len: number,
    budget: number,
    mask: number,
  ): number;
  tokenThresholdBits(p: number, g: number, len: number, budget: number): number;
  sampledMap(
    qw: number,
    kt: number,
    offsets: number,
    tileStart: number,
    tileLen: number,
    tiles: number,
    g: number,
    tokens: number,
    headDim: number,
    scale: number,
    samples: number,
    maxSamples: number,
    coef: number,
    hybrid: number,
    scratch: number,
    p: number,
    i0: number,
    i1: number,
  ): void;
}

/** Sampled query positions and coefficients of one geometry (see {@linkcode sampleTable}). */
export interface SampleTable {
  /** Samples per block at most (the table's stride is `samples + 1`). */
  samples: number;
  /**
   * `[g * (samples + 1)]`: for video block `i`, `n_i` at `i * (samples + 1)`, then the `n_i`
   * window-order positions of its sampled queries (absolute, not relative to the block).
   */
  table: Int32Array;
  /** `[2 * g]`: `f32(len_i / (maxLen * n_i))` (sampled) and `f32(len_i / maxLen)` (hybrid). */
  coef: Float32Array;
  /** The largest video window, in tokens. */
  maxLen: number;
}

/** `(sqrt(5) - 1) / 2`: the column step of the sample pattern. */
const GOLDEN = (Math.sqrt(5) - 1) / 2;

/**
 * The sampled query positions of a geometry: in a window of `hh` rows and `ww` columns
 * (`len = hh * ww` tokens), `n = min(samples, len)` samples; sample `s` sits at row
 * `floor((s + 0.5) * hh / n)` and column `floor(frac((s + 0.5) * GOLDEN) * ww)` with GOLDEN =
 * (sqrt(5) - 1) / 2 (rows evenly spread, columns a golden-ratio sequence), or when that token is
 * taken by an earlier sample, the next free token in the window's raster order (wrapping). With
 * `n = len` every token is sampled. With `density` (budget "tokens") the coefficients are
 * `1 / n_i` and `g / videoTokens`: the estimator then gives mass per key token (module doc).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildPlan } from "./plan.ts";
 * import { sampleTable } from "./selection.ts";
 * const plan = buildPlan({
 *   frames: 1, height: 8, width: 16, textTokens: 0, textPosition: "after", poolH: 8, poolW: 16,
 * });
 * const { table, coef } = sampleTable(plan, 2);
 * assert.ok(table.join() === "2,36,110" && coef[0] === 0.5 && coef[1] === 1);
 * ```
 */
export function sampleTable(plan: Plan, samples: number, density = false): SampleTable {
  if (!Number.isInteger(samples) || samples < 1 || samples > MAX_SAMPLES) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "samples",
      `must be an integer in [1, ${MAX_SAMPLES}], got ${describeValue(samples)}`,
    );
  }
  const { g, nh, nw } = plan;
  const { poolH, poolW, height, width } = plan.geometry;
  let maxLen = 1, videoTokens = 0;
  for (let i = 0; i < g; i++) {
    maxLen = Math.max(maxLen, plan.tileLen[i]);
    videoTokens += plan.tileLen[i];
  }
  const stride = samples + 1;
  const table = new Int32Array(g * stride);
  const coef = new Float32Array(2 * g);
  for (let i = 0; i < g; i++) {
    const wr = Math.floor(i / nw) % nh, wc = i % nw;
    const hh = Math.min(poolH, height - wr * poolH);
    const ww = Math.min(poolW, width - wc * poolW);
    const len = hh * ww;
    const n = Math.min(samples, len);
    const used = new Uint8Array(len);
    for (let s = 0; s < n; s++) {
      const r = Math.floor(((s + 0.5) * hh) / n);
      const c = Math.floor((((s + 0.5) * GOLDEN) % 1) * ww);
      let x = r * ww + c;
      while (used[x]) x = (x + 1) % len;
      used[x] = 1;
      table[i * stride + 1 + s] = plan.tileStart[i] + x;
    }
    table[i * stride] = n;
    // Density (budget "tokens"): the mean sample's mass per key token, beside the draft map.
    coef[2 * i] = density ? 1 / n : len / (maxLen * n);
    coef[2 * i + 1] = density ? g / videoTokens : len / maxLen;
  }
  return { samples, table, coef, maxLen };
}

let reference: AsmInstance | undefined;

/**
 * The WebAssembly reference of the row policies on one map `p` (`g x g`, entries in [0, 1]):
 * rowTopK with `rowKeep` per row, and with `tau` given, rowMass capped at `rowKeep`. Returns
 * `g * g` bytes, 1 = kept. The GPU's mask is tested to equal it on the same map.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectRowMask } from "./selection.ts";
 * const p = new Float32Array([0.6, 0.3, 0.1, 0.2, 0.2, 0.6, 0.5, 0.25, 0.25]);
 * assert.equal(selectRowMask(p, 3, { rowKeep: 1 }).join(), "1,0,0,0,0,1,1,0,0");
 * assert.equal(selectRowMask(p, 3, { rowKeep: 3, tau: 0.7 }).join(), "1,1,0,1,1,1,1,1,1");
 * ```
 */
export function selectRowMask(
  p: Float32Array,
  g: number,
  opts: { rowKeep: number; tau?: number },
): Uint8Array {
  if (!Number.isInteger(g) || g < 1 || p.length !== g * g) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "p",
      `must hold g * g values for an integer g >= 1, got g = ${describeValue(g)} and ${p.length}`,
    );
  }
  const { rowKeep, tau } = opts;
  if (!Number.isInteger(rowKeep) || rowKeep < 1 || rowKeep > g) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "rowKeep",
      `must be an integer in [1, ${g}], got ${describeValue(rowKeep)}`,
    );
  }
  if (tau !== undefined && !(typeof tau === "number" && tau > 0 && tau <= 1)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "tau",
      `must be a number in (0, 1], got ${describeValue(tau)}`,
    );
  }
  reference ??= new AsmInstance("release");
  const a = reference;
  a.reset();
  const pp = a.alloc(g * g * 4, "the importance map");
  const mask = a.alloc(g * g, "the block mask");
  a.f32(pp, g * g).set(p);
  (a.x as unknown as PolicyExports).selectRows(
    pp,
    g,
    rowKeep,
    tau === undefined ? 0 : 1,
    Math.fround(tau ?? 1),
    mask,
  );
  return a.u8(mask, g * g).slice();
}

/**
 * The WebAssembly reference of the token-budget threshold (budget "tokens") on one map `p`
 * (`g x g`, entries >= 0) with window sizes `lens`: the largest value whose entries at or above
 * it hold at least `budget` token pairs (`lens[i] * lens[j]` each), as an f32. The GPU's
 * threshold (wgsl/select_tokens.wgsl) is tested to equal it on the same map.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenThreshold } from "./selection.ts";
 * const p = new Float32Array([0.5, 0.25, 0.125, 0.125]);
 * assert.ok(tokenThreshold(p, [2, 1], 4) === 0.5); // block (0, 0) holds 4 pairs
 * assert.ok(tokenThreshold(p, [2, 1], 5) === 0.25);
 * ```
 */
export function tokenThreshold(p: Float32Array, lens: readonly number[], budget: number): number {
  const g = lens.length;
  if (g < 1 || p.length !== g * g) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "p",
      `must hold lens.length^2 = ${g * g} values, got ${p.length}`,
    );
  }
  let total = 0;
  for (const a of lens) for (const b of lens) total += a * b;
  if (!Number.isSafeInteger(budget) || budget < 1 || budget > total) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "budget",
      `must be an integer in [1, ${total}], got ${describeValue(budget)}`,
    );
  }
  reference ??= new AsmInstance("release");
  const a = reference;
  a.reset();
  const pp = a.alloc(g * g * 4, "the importance map");
  const len = a.alloc(g * 4, "the window sizes");
  a.f32(pp, g * g).set(p);
  a.i32(len, g).set(lens);
  const bits = (a.x as unknown as PolicyExports).tokenThresholdBits(pp, g, len, budget);
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

/** The budgets of the policies (src/validate.ts): re-exported next to their definitions. */
export { keepCount, pairBudget, rowKeepCount };
