// deno-fmt-ignore-file: deno fmt drops AssemblyScript's @inline decorators.
// Block-selection policies beyond the reference percentile (per-row top-k, per-row cumulative
// mass) and the sampled block-importance estimator. The WGSL kernels wgsl/select_row.wgsl and
// wgsl/estimate_sampled.wgsl compute the same things on the GPU; the selection here is the exact
// reference the GPU mask must equal. Definitions: src/selection.ts.

import { kthLargestBits, maskAtThreshold } from "./plan";

/** Fixed-point scale of the quantised masses of rowMass: w(P) = floor(min(P, 1) * 2^22). */
@inline const MASS_SCALE: f32 = 4194304.0;

/** Quantised mass of one importance value given by its bit pattern (value >= 0). */
@inline function massOf(bits: u32): u32 {
  return <u32>Mathf.floor(Mathf.min(reinterpret<f32>(bits), <f32>1.0) * MASS_SCALE);
}

/**
 * Weight of column j in rowMass's masses: 1, or under the token budget (`len` != 0, the map a
 * density per key token) the tokens of key block j, so a masses sum is per token:
 * w = floor(min(x, 1) * 2^22) * len_j, integers either way.
 */
@inline function lenOf(len: usize, j: i32): u32 {
  return len == 0 ? 1 : <u32>load<i32>(len + (<usize>j << 2));
}

/** Count and mass histograms of one radix digit. */
const HC: usize = memory.data(256 * 4, 16);
const HM: usize = memory.data(256 * 4, 16);

/**
 * rowMass threshold of one row (`g` values >= 0 at `row`, as bits): with w the quantised masses,
 * Z = sum of w and T = ceil(tau * f32(Z)), the largest value v of the row whose cumulative mass
 * C(v) = sum of w over the entries >= v reaches T. MSD radix select over the bit patterns with a
 * mass histogram next to the count histogram; integer sums, so any summation order gives the same
 * answer (the GPU sums with atomics).
 */
export function rowMassBits(row: usize, g: i32, tau: f32, len: usize): u32 {
  let z: u32 = 0;
  for (let j = 0; j < g; j++) z += massOf(load<u32>(row + (<usize>j << 2))) * lenOf(len, j);
  const target = <u32>Mathf.ceil(tau * <f32>z);
  let prefix: u32 = 0;
  let known: u32 = 0;
  let above: u32 = 0; // mass of the entries above the current prefix group
  for (let shift: u32 = 24;; shift -= 8) {
    memory.fill(HC, 0, 256 * 4);
    memory.fill(HM, 0, 256 * 4);
    for (let j = 0; j < g; j++) {
      const x = load<u32>(row + (<usize>j << 2));
      if ((x & known) == prefix) {
        const d = <usize>((x >> shift) & 255) << 2;
        store<u32>(HC + d, load<u32>(HC + d) + 1);
        store<u32>(HM + d, load<u32>(HM + d) + massOf(x) * lenOf(len, j));
      }
    }
    let digit: u32 = 255;
    for (;; digit--) {
      const c = load<u32>(HC + (<usize>digit << 2));
      const m = load<u32>(HM + (<usize>digit << 2));
      if (c > 0 && above + m >= target) break;
      above += m;
      assert(digit > 0);
    }
    prefix |= digit << shift;
    known |= <u32>255 << shift;
    if (shift == 0) break;
  }
  return prefix;
}

/**
 * Row policies on one (batch, head) map `p` (f32[g*g], >= 0): row i keeps the entries whose bits
 * are >= its threshold, the `rowKeep`-th largest of the row (ties kept; skipped when rowKeep ==
 * g), and with `mass` != 0 also >= the rowMass threshold for `tau` (the stricter of the two).
 * mask: u8[g*g]. Returns the number of kept entries.
 */
export function selectRows(p: usize, g: i32, rowKeep: i32, mass: i32, tau: f32, mask: usize): i32 {
  let kept = 0;
  for (let i = 0; i < g; i++) {
    const row = p + ((<usize>i * <usize>g) << 2);
    let t: u32 = 0;
    if (rowKeep < g) t = kthLargestBits(row, <u32>g, <u32>rowKeep);
    if (mass != 0) t = max(t, rowMassBits(row, g, tau, 0));
    const out = mask + <usize>i * <usize>g;
    for (let j = 0; j < g; j++) {
      const on = load<u32>(row + (<usize>j << 2)) >= t;
      store<u8>(out + <usize>j, <u8>on);
      kept += <i32>on;
    }
  }
  return kept;
}

/** Count and token-pair histograms of one radix digit for `tokenThresholdBits`. */
const TC: usize = memory.data(256 * 4, 16);
const TW: usize = memory.data(256 * 8, 16);

/**
 * Token-budget threshold of one (batch, head) map (budget "tokens"): with w(i, j) = len[i] *
 * len[j] the token pairs of block (i, j) and W(v) = sum of w over the entries >= v, the largest
 * value v of the map with W(v) >= budget. MSD radix select over the f32 bit patterns with a
 * pair-count histogram (u64) beside the count histogram, as `rowMassBits` does with masses;
 * integer sums, so any summation order (the GPU's atomics) gives the same threshold. p: f32[g*g]
 * (>= 0), len: i32[g], budget <= sum of w (an integer below 2^53).
 */
export function tokenThresholdBits(p: usize, g: i32, len: usize, budget: f64): u32 {
  const target = <u64>budget;
  let prefix: u32 = 0;
  let known: u32 = 0;
  let above: u64 = 0; // pairs of the entries above the current prefix group
  for (let shift: u32 = 24;; shift -= 8) {
    memory.fill(TC, 0, 256 * 4);
    memory.fill(TW, 0, 256 * 8);
    for (let i = 0; i < g; i++) {
      const li = <u64>load<i32>(len + (<usize>i << 2));
      const row = p + ((<usize>i * <usize>g) << 2);
      for (let j = 0; j < g; j++) {
        const x = load<u32>(row + (<usize>j << 2));
        if ((x & known) == prefix) {
          const d = <usize>((x >> shift) & 255);
          store<u32>(TC + (d << 2), load<u32>(TC + (d << 2)) + 1);
          const w = li * <u64>load<i32>(len + (<usize>j << 2));
          store<u64>(TW + (d << 3), load<u64>(TW + (d << 3)) + w);
        }
      }
    }
    let digit: u32 = 255;
    for (;; digit--) {
      const c = load<u32>(TC + (<usize>digit << 2));
      const m = load<u64>(TW + (<usize>digit << 3));
      if (c > 0 && above + m >= target) break;
      above += m;
      assert(digit > 0);
    }
    prefix |= digit << shift;
    known |= <u32>255 << shift;
    if (shift == 0) break;
  }
  return prefix;
}

/**
 * Percentile mask under the token budget: mask[i*g+j] = 1 where P[i][j] >= the
 * `tokenThresholdBits` threshold or P[i][j] is its row's largest entry (as `selectMask`).
 * Returns the number of kept entries.
 */
export function selectMaskTokens(p: usize, g: i32, len: usize, budget: f64, mask: usize): i32 {
  return maskAtThreshold(p, g, tokenThresholdBits(p, g, len, budget), mask);
}

/**
 * rowMass under the token budget: row i keeps the entries >= max(u_i, min(t, rowMax_i)), with
 * u_i its rowMass threshold for `tau` (uncapped, masses weighted by the key block's tokens) and t the `tokenThresholdBits` threshold of the
 * whole map: each row stops at `tau` of its mass, and no entry below the budget's density
 * threshold is kept (except the row's maximum), so the pair budget goes to the rows that need it.
 * Returns the number of kept entries.
 */
export function selectRowMassTokens(
  p: usize,
  g: i32,
  tau: f32,
  len: usize,
  budget: f64,
  mask: usize,
): i32 {
  const t = tokenThresholdBits(p, g, len, budget);
  let kept = 0;
  for (let i = 0; i < g; i++) {
    const row = p + ((<usize>i * <usize>g) << 2);
    let rowMax: u32 = 0;
    for (let j = 0; j < g; j++) rowMax = max(rowMax, load<u32>(row + (<usize>j << 2)));
    const thr = max(rowMassBits(row, g, tau, len), min(t, rowMax));
    const out = mask + <usize>i * <usize>g;
    for (let j = 0; j < g; j++) {
      const on = load<u32>(row + (<usize>j << 2)) >= thr;
      store<u8>(out + <usize>j, <u8>on);
      kept += <i32>on;
    }
  }
  return kept;
}

/** 2^x on 4 lanes (Cephes exp2f, as `vexp2` of asm/attention.ts); lanes below -126 give 0. */
@inline function vexp2(x: v128): v128 {
  const lo = f32x4.splat(-126);
  const live = f32x4.ge(x, lo);
  const t = f32x4.pmin(f32x4.pmax(x, lo), f32x4.splat(127));
  const n = f32x4.nearest(t);
  const f = f32x4.sub(t, n);
  let y = f32x4.splat(1.535336188319500e-4);
  y = f32x4.relaxed_madd(y, f, f32x4.splat(1.339887440266574e-3));
  y = f32x4.relaxed_madd(y, f, f32x4.splat(9.618437357674640e-3));
  y = f32x4.relaxed_madd(y, f, f32x4.splat(5.550332471162809e-2));
  y = f32x4.relaxed_madd(y, f, f32x4.splat(2.402264791363012e-1));
  y = f32x4.relaxed_madd(y, f, f32x4.splat(6.931472028550421e-1));
  y = f32x4.relaxed_madd(y, f, f32x4.splat(1));
  const e = i32x4.shl(i32x4.relaxed_trunc_f32x4_s(n), 23);
  return v128.and(i32x4.add(y, e), live);
}

@inline function roundUp4(x: i32): i32 {
  return (x + 3) & ~3;
}

/** Bytes of scratch `sampledMap` needs: 4 logit rows of the tokens and g accumulators. */
export function sampledScratchBytes(tokens: i32, g: i32): i32 {
  return (4 * roundUp4(tokens) + roundUp4(g)) << 2;
}

/**
 * Sampled block importance of one (batch, head), query tiles i0 <= i < i1 (rows i of `p`; items
 * over disjoint ranges can run on different threads, each with its own scratch). For video
 * query tile i, its n_i sampled query
 * rows (window-order positions `samples[i * stride + 1 + s]`, n_i = `samples[i * stride]`,
 * stride = maxSamples + 1) attend exactly to every key (softmax over all `tokens` keys, text
 * included); each sample's probability mass is summed per video key tile j, and
 * I[i][j] = coef[2i] * sum over samples of mass_s(j), times f32(1 / len_j) when bit 1 of `hybrid`
 * is set (density, budget "tokens"). With bit 0 of `hybrid` set the draft map already in `p` is
 * mixed in: p[i][j] = 0.5 * (coef[2i + 1] * p[i][j] + I[i][j]); else p[i][j] = I[i][j].
 *
 * qw: window-order query rows f32[tokens * headDim]; kt, offsets: keys packed by `packKeys`
 * (panels of 8 keys, [headDim][8], zero past a tile's end). Logits are kept in log2 units so
 * that `vexp2` is the whole exp. scratch: sampledScratchBytes(tokens, g).
 */
export function sampledMap(
  qw: usize,
  kt: usize,
  offsets: usize,
  tileStart: usize,
  tileLen: usize,
  tiles: i32,
  g: i32,
  tokens: i32,
  headDim: i32,
  scale: f32,
  samples: usize,
  maxSamples: i32,
  coef: usize,
  hybrid: i32,
  scratch: usize,
  p: usize,
  i0: i32,
  i1: i32,
): void {
  const D = headDim;
  const rowBytes = <usize>D << 2;
  const np = roundUp4(tokens);
  const logits = scratch; // f32[4][np]
  const acc = scratch + (<usize>(4 * np) << 2); // f32[g]
  const vscale = f32x4.splat(scale * <f32>Math.LOG2E);
  const ninf = f32x4.splat(-Infinity);
  const stride = maxSamples + 1;
  for (let i = i0; i < i1; i++) {
    const st = samples + (<usize>(i * stride) << 2);
    const n = load<i32>(st);
    memory.fill(acc, 0, <usize>g << 2);
    for (let s0 = 0; s0 < n; s0 += 4) {
      const ns = min(4, n - s0);
      // Rows of the group; a missing row repeats the last one (its results are not read).
      const q0 = qw + <usize>load<i32>(st + (<usize>(1 + s0) << 2)) * rowBytes;
      const q1 = qw + <usize>load<i32>(st + (<usize>(1 + s0 + min(1, ns - 1)) << 2)) * rowBytes;
      const q2 = qw + <usize>load<i32>(st + (<usize>(1 + s0 + min(2, ns - 1)) << 2)) * rowBytes;
      const q3 = qw + <usize>load<i32>(st + (<usize>(1 + s0 + min(3, ns - 1)) << 2)) * rowBytes;
      for (let r = 0; r < 4; r++) {
        const lr = logits + (<usize>(r * np) << 2);
        for (let x = tokens; x < np; x++) store<f32>(lr + (<usize>x << 2), -Infinity);
      }
      // Logits against every key tile, 4 rows x 8 keys per packed panel.
      for (let t = 0; t < tiles; t++) {
        const ts = load<i32>(tileStart + (<usize>t << 2));
        const tl = load<i32>(tileLen + (<usize>t << 2));
        let panel = kt + (<usize>load<i32>(offsets + (<usize>t << 2)) << 2);
        for (let b = 0; b < tl; b += 8) {
          let a00 = f32x4.splat(0), a01 = f32x4.splat(0);
          let a10 = f32x4.splat(0), a11 = f32x4.splat(0);
          let a20 = f32x4.splat(0), a21 = f32x4.splat(0);
          let a30 = f32x4.splat(0), a31 = f32x4.splat(0);
          for (let d: usize = 0; d < rowBytes; d += 4) {
            const k0 = v128.load(panel);
            const k1 = v128.load(panel, 16);
            panel += 32;
            let x: v128;
            x = v128.load32_splat(q0 + d);
            a00 = f32x4.relaxed_madd(x, k0, a00);
            a01 = f32x4.relaxed_madd(x, k1, a01);
            x = v128.load32_splat(q1 + d);
            a10 = f32x4.relaxed_madd(x, k0, a10);
            a11 = f32x4.relaxed_madd(x, k1, a11);
            x = v128.load32_splat(q2 + d);
            a20 = f32x4.relaxed_madd(x, k0, a20);
            a21 = f32x4.relaxed_madd(x, k1, a21);
            x = v128.load32_splat(q3 + d);
            a30 = f32x4.relaxed_madd(x, k0, a30);
            a31 = f32x4.relaxed_madd(x, k1, a31);
          }
          const cnt = min(8, tl - b);
          const pos = ts + b;
          storeLogits(logits, pos, cnt, f32x4.mul(a00, vscale), f32x4.mul(a01, vscale));
          storeLogits(logits + (<usize>np << 2), pos, cnt, f32x4.mul(a10, vscale), f32x4.mul(a11, vscale));
          storeLogits(logits + (<usize>(2 * np) << 2), pos, cnt, f32x4.mul(a20, vscale), f32x4.mul(a21, vscale));
          storeLogits(logits + (<usize>(3 * np) << 2), pos, cnt, f32x4.mul(a30, vscale), f32x4.mul(a31, vscale));
        }
      }
      // Softmax over all keys per sample, then its mass per video key tile.
      for (let r = 0; r < ns; r++) {
        const lr = logits + (<usize>(r * np) << 2);
        let vm = ninf;
        for (let x = 0; x < np; x += 4) vm = f32x4.pmax(vm, v128.load(lr + (<usize>x << 2)));
        const m = max(
          max(f32x4.extract_lane(vm, 0), f32x4.extract_lane(vm, 1)),
          max(f32x4.extract_lane(vm, 2), f32x4.extract_lane(vm, 3)),
        );
        const vmx = f32x4.splat(m);
        let vz = f32x4.splat(0);
        for (let x = 0; x < np; x += 4) {
          const e = vexp2(f32x4.sub(v128.load(lr + (<usize>x << 2)), vmx));
          v128.store(lr + (<usize>x << 2), e);
          vz = f32x4.add(vz, e);
        }
        const z = f32x4.extract_lane(vz, 0) + f32x4.extract_lane(vz, 1) +
          f32x4.extract_lane(vz, 2) + f32x4.extract_lane(vz, 3);
        const inv: f32 = <f32>1.0 / z;
        for (let j = 0; j < g; j++) {
          const ts = load<i32>(tileStart + (<usize>j << 2));
          const tl = load<i32>(tileLen + (<usize>j << 2));
          let sum: f32 = 0;
          for (let x = 0; x < tl; x++) sum += load<f32>(lr + (<usize>(ts + x) << 2));
          const a = acc + (<usize>j << 2);
          store<f32>(a, load<f32>(a) + sum * inv);
        }
      }
    }
    const c = load<f32>(coef + (<usize>(2 * i) << 2));
    const dc = load<f32>(coef + (<usize>(2 * i + 1) << 2));
    const row = p + ((<usize>i * <usize>g) << 2);
    for (let j = 0; j < g; j++) {
      let est = c * load<f32>(acc + (<usize>j << 2));
      // Density (budget "tokens"): mass per key token of block j.
      if ((hybrid & 2) != 0) est *= <f32>1.0 / <f32>load<i32>(tileLen + (<usize>j << 2));
      const at = row + (<usize>j << 2);
      store<f32>(at, (hybrid & 1) != 0 ? <f32>0.5 * (dc * load<f32>(at) + est) : est);
    }
  }
}

/** Stores the first `cnt` (<= 8) of the 8 logits (lo, hi) at window-order position `pos`. */
@inline function storeLogits(row: usize, pos: i32, cnt: i32, lo: v128, hi: v128): void {
  const at = row + (<usize>pos << 2);
  if (cnt == 8) {
    v128.store(at, lo);
    v128.store(at, hi, 16);
    return;
  }
  store<f32>(at, f32x4.extract_lane(lo, 0));
  if (cnt > 1) store<f32>(at, f32x4.extract_lane(lo, 1), 4);
  if (cnt > 2) store<f32>(at, f32x4.extract_lane(lo, 2), 8);
  if (cnt > 3) store<f32>(at, f32x4.extract_lane(lo, 3), 12);
  if (cnt > 4) store<f32>(at, f32x4.extract_lane(hi, 0), 16);
  if (cnt > 5) store<f32>(at, f32x4.extract_lane(hi, 1), 20);
  if (cnt > 6) store<f32>(at, f32x4.extract_lane(hi, 2), 24);
  if (cnt > 7) store<f32>(at, f32x4.extract_lane(hi, 3), 28);
}
