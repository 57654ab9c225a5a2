// deno-fmt-ignore-file: deno fmt drops AssemblyScript's @inline decorators.
// Draft attention for one (batch, head), in stages that the host (src/wasm/backend.ts) calls in
// turn: gather rows into window order, pack K, pool, draft map, (mask and lists in plan.ts),
// block-sparse flash attention. All buffers are raw pointers into this module's memory; all
// sizes are in elements unless a name ends in "Bytes". f32 throughout.

/** Keys per chunk of the flash kernel (a multiple of 8). 32 and 128 measured no faster. */
@inline const KC: i32 = 64;
/** Query rows per register tile of the flash kernel (6 rows x 8 keys = 12 v128 accumulators). */
@inline const QR: i32 = 6;

@inline function roundUp(x: i32, m: i32): i32 {
  return (x + m - 1) / m * m;
}

@inline function at(base: usize, i: i32): usize {
  return base + (<usize>i << 2);
}

/**
 * Copies the rows of one head into window order: dst[p*D .. p*D+D) = row `order[p]` of the
 * head, read at `src + (order[p] * strideT + headOffset) * 4`.
 */
export function gatherRows(
  src: usize,
  strideT: i32,
  headOffset: i32,
  order: usize,
  tokens: i32,
  headDim: i32,
  dst: usize,
): void {
  const rowBytes = <usize>headDim << 2;
  for (let p = 0; p < tokens; p++) {
    const t = load<i32>(at(order, p));
    const from = src + ((<usize>t * <usize>strideT + <usize>headOffset) << 2);
    memory.copy(dst + <usize>p * rowBytes, from, rowBytes);
  }
}

/**
 * Offsets (in floats) of each tile's packed keys in the `packKeys` buffer: tile t takes
 * roundUp(len, 8) * headDim floats. offsets: i32[tiles]. Returns the total.
 */
export function packedKeyOffsets(tileLen: usize, tiles: i32, headDim: i32, offsets: usize): i32 {
  let off = 0;
  for (let t = 0; t < tiles; t++) {
    store<i32>(at(offsets, t), off);
    off += roundUp(load<i32>(at(tileLen, t)), 8) * headDim;
  }
  return off;
}

/**
 * Packs the keys (window order rows `kw`) for the flash kernel: each tile is cut into chunks of
 * KC keys; chunk c of tile t starts at float `offsets[t] + c * KC * headDim` and stores its keys
 * in panels of 8: panel b holds [headDim][8] (key 8b+lane at d), zero past the tile's end.
 * A panel is read front to back while a group of query rows takes its dot products with the
 * panel's 8 keys.
 */
export function packKeys(
  kw: usize,
  tileStart: usize,
  tileLen: usize,
  tiles: i32,
  headDim: i32,
  offsets: usize,
  kt: usize,
): void {
  for (let t = 0; t < tiles; t++) {
    packTile(
      kw,
      load<i32>(at(tileStart, t)),
      load<i32>(at(tileLen, t)),
      headDim,
      kt + (<usize>load<i32>(at(offsets, t)) << 2),
    );
  }
}

/** Packs one tile (positions s .. s+len-1 of `kw`) at `base`; see `packKeys`. */
function packTile(kw: usize, s: i32, len: i32, headDim: i32, base: usize): void {
  const panels = roundUp(len, 8) >> 3;
  for (let b = 0; b < panels; b++) {
    const panel = base + (<usize>(b * headDim * 8) << 2);
    for (let lane = 0; lane < 8; lane++) {
      const key = b * 8 + lane;
      if (key < len) {
        const row = kw + (<usize>(s + key) * <usize>headDim << 2);
        for (let d = 0; d < headDim; d++) {
          store<f32>(panel + (<usize>(d * 8 + lane) << 2), load<f32>(at(row, d)));
        }
      } else {
        for (let d = 0; d < headDim; d++) store<f32>(panel + (<usize>(d * 8 + lane) << 2), 0);
      }
    }
  }
}

/**
 * Window means of the first `g` tiles: out[i*D + d] = (sum of x[p*D + d] over the tile's
 * positions p, sequential in window order) * (1 / len). Each lane of a v128 is one d, so the
 * order of operations per element is exactly the scalar one (the GPU does the same).
 */
export function poolTiles(
  x: usize,
  tileStart: usize,
  tileLen: usize,
  g: i32,
  headDim: i32,
  out: usize,
): void {
  const rowBytes = <usize>headDim << 2;
  for (let i = 0; i < g; i++) {
    const dst = out + <usize>i * rowBytes;
    poolTile(x, load<i32>(at(tileStart, i)), load<i32>(at(tileLen, i)), rowBytes, dst);
  }
}

/** Mean of rows s .. s+len-1 of `x` into `dst`; see `poolTiles`. */
function poolTile(x: usize, s: i32, len: i32, rowBytes: usize, dst: usize): void {
  const inv = f32x4.splat(<f32>1.0 / <f32>len);
  for (let d: usize = 0; d < rowBytes; d += 16) {
    let acc = f32x4.splat(0);
    let src = x + <usize>s * rowBytes + d;
    for (let p = 0; p < len; p++) {
      acc = f32x4.add(acc, v128.load(src));
      src += rowBytes;
    }
    v128.store(dst + d, f32x4.mul(acc, inv));
  }
}

/**
 * Everything one (batch, head) needs before its draft map, for tiles t0 .. t1-1 only, so that
 * threads can split a head by tiles (each tile is a contiguous run of window order, so the
 * pieces write disjoint memory): gathers the tiles' rows of q, k and v into window order
 * (`gatherRows`), packs their keys (`packKeys`, with `offsets` from `packedKeyOffsets`) and,
 * when qd != 0, writes the window means of the video tiles (t < g) among them (`poolTiles`).
 * The results are exactly those of the whole-head functions.
 */
export function prepTiles(
  q: usize,
  k: usize,
  v: usize,
  strideT: i32,
  headOffset: i32,
  order: usize,
  tileStart: usize,
  tileLen: usize,
  offsets: usize,
  t0: i32,
  t1: i32,
  g: i32,
  headDim: i32,
  qw: usize,
  kw: usize,
  vw: usize,
  kt: usize,
  qd: usize,
  kd: usize,
): void {
  const rowBytes = <usize>headDim << 2;
  for (let t = t0; t < t1; t++) {
    const s = load<i32>(at(tileStart, t));
    const len = load<i32>(at(tileLen, t));
    const ord = at(order, s);
    const skip = <usize>s * rowBytes;
    gatherRows(q, strideT, headOffset, ord, len, headDim, qw + skip);
    gatherRows(k, strideT, headOffset, ord, len, headDim, kw + skip);
    gatherRows(v, strideT, headOffset, ord, len, headDim, vw + skip);
    packTile(kw, s, len, headDim, kt + (<usize>load<i32>(at(offsets, t)) << 2));
    if (qd != 0 && t < g) {
      poolTile(qw, s, len, rowBytes, qd + <usize>t * rowBytes);
      poolTile(kw, s, len, rowBytes, kd + <usize>t * rowBytes);
    }
  }
}

/**
 * Draft map of one (batch, head): p[i*g + j] = softmax_j(dot(qd_i, kd_j) * scale), the dot a
 * sequential f32 sum over d (lanes = 4 columns j, mul then add: no fused multiply-add, so each
 * lane rounds exactly like the scalar loop), softmax as m = max, e = exp(s - m), Z = sequential
 * sum of e, p = e / Z. kdT: scratch f32[headDim * roundUp(g, 4)].
 */
export function draftMap(
  qd: usize,
  kd: usize,
  g: i32,
  headDim: i32,
  scale: f32,
  kdT: usize,
  p: usize,
): void {
  const gp = roundUp(g, 4);
  for (let d = 0; d < headDim; d++) {
    for (let j = 0; j < gp; j++) {
      const v: f32 = j < g ? load<f32>(at(kd, j * headDim + d)) : 0;
      store<f32>(at(kdT, d * gp + j), v);
    }
  }
  const vscale = f32x4.splat(scale);
  for (let i = 0; i < g; i++) {
    const qi = qd + (<usize>(i * headDim) << 2);
    const row = p + ((<usize>i * <usize>g) << 2);
    for (let j = 0; j < gp; j += 4) {
      let acc = f32x4.splat(0);
      for (let d = 0; d < headDim; d++) {
        const k = v128.load(at(kdT, d * gp + j));
        acc = f32x4.add(acc, f32x4.mul(v128.load32_splat(at(qi, d)), k));
      }
      acc = f32x4.mul(acc, vscale);
      if (j + 4 <= g) {
        v128.store(at(row, j), acc);
      } else {
        store<f32>(at(row, j), f32x4.extract_lane(acc, 0));
        if (j + 1 < g) store<f32>(at(row, j + 1), f32x4.extract_lane(acc, 1));
        if (j + 2 < g) store<f32>(at(row, j + 2), f32x4.extract_lane(acc, 2));
      }
    }
    let m = -Infinity as f32;
    for (let j = 0; j < g; j++) m = max(m, load<f32>(at(row, j)));
    let z: f32 = 0;
    for (let j = 0; j < g; j++) {
      const e = Mathf.exp(load<f32>(at(row, j)) - m);
      store<f32>(at(row, j), e);
      z += e;
    }
    for (let j = 0; j < g; j++) store<f32>(at(row, j), load<f32>(at(row, j)) / z);
  }
}

/**
 * 2^x on 4 lanes, after Cephes `exp2f` (S. L. Moshier, Cephes Math Library,
 * cephes/single/exp2f.c): x = n + f with n = round(x), |f| <= 1/2, 2^f = 1 + f P(f) with P of
 * degree 5 (relative error ~2e-7), and 2^n added to the exponent bits. Lanes below -126
 * (including -inf) give exactly 0. The flash kernel keeps scores in log2 units (S * scale *
 * log2(e)) so that this is the whole exp: 6 fused multiply-adds and 8 single-instruction ops
 * (pmin/pmax and relaxed_trunc compile to one x86 instruction each, unlike min/max/trunc_sat).
 */
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

/**
 * Query rows per block: a block's accumulators (QB x headDim floats) stay in cache while every
 * key chunk of its list passes by once.
 */
@inline const QB: i32 = 128;

/** Bytes of scratch `flash` needs for one call. */
export function flashScratchBytes(headDim: i32): i32 {
  return ((QB + QR) * headDim + 2 * (QB + QR) + QR * KC) << 2;
}

/**
 * Block-sparse flash attention of one (batch, head) (Dao et al., "FlashAttention", NeurIPS
 * 2022: online softmax over key chunks, f32 statistics and accumulators).
 *
 * qw, vw: window-order rows f32[tokens * headDim]; kt: keys packed by `packKeys` with
 * `offsets`. Query tile i visits the key tiles list[i * listStride .. + count[i]] (listStride 0:
 * one shared list). Output row of window position p goes to raster row order[p]:
 * out + (order[p] * strideT + headOffset) * 4.
 *
 * Loop order: query block (<= QB rows of one tile) -> key tile of its list -> key chunk (KC
 * keys) -> group of QR = 6 query rows. A chunk's packed K and V (2 x 64 x headDim floats, 64 KiB at
 * headDim 128) are reused by every group of the block while they sit in L1/L2; the group's
 * 6 x 8 register tiles are in `groupChunk`.
 */
export function flash(
  qw: usize,
  kt: usize,
  offsets: usize,
  vw: usize,
  out: usize,
  strideT: i32,
  headOffset: i32,
  order: usize,
  tileStart: usize,
  tileLen: usize,
  tiles: i32,
  count: usize,
  list: usize,
  listStride: i32,
  headDim: i32,
  scale: f32,
  scratch: usize,
): void {
  for (let i = 0; i < tiles; i++) {
    const ql = load<i32>(at(tileLen, i));
    for (let rb = 0; rb < ql; rb += QB) {
      flashBlock(
        qw, kt, offsets, vw, out, strideT, headOffset, order, tileStart, tileLen, i, rb,
        min(QB, ql - rb), count, list, listStride, headDim, scale, scratch,
      );
    }
  }
}

/**
 * One work item of `flash`: rows rb .. rb+rows-1 (rows <= QB) of query tile i. Items write
 * disjoint output rows and read only shared inputs, so threads may run them in any order and
 * each output row is computed exactly as `flash` computes it (same key order, same groups of
 * QR rows when rb is a multiple of QB). Arguments as in `flash`; scratch:
 * `flashScratchBytes(headDim)` bytes owned by the calling thread.
 */
export function flashBlock(
  qw: usize,
  kt: usize,
  offsets: usize,
  vw: usize,
  out: usize,
  strideT: i32,
  headOffset: i32,
  order: usize,
  tileStart: usize,
  tileLen: usize,
  i: i32,
  rb: i32,
  rows: i32,
  count: usize,
  list: usize,
  listStride: i32,
  headDim: i32,
  scale: f32,
  scratch: usize,
): void {
  const D = headDim;
  const rowBytes = <usize>D << 2;
  const acc = scratch; // f32[QB + QR][D]: a last partial group of rows writes past QB
  const mrow = acc + <usize>(QB + QR) * rowBytes; // f32[QB + QR] running max
  const lrow = mrow + (<usize>(QB + QR) << 2); // f32[QB + QR] running sum
  const sbuf = lrow + (<usize>(QB + QR) << 2); // f32[QR][KC] scores, then P
  const qs = load<i32>(at(tileStart, i));
  const n = load<i32>(at(count, i));
  const lst = list + (<usize>(i * listStride) << 2);
  const q = qw + <usize>(qs + rb) * rowBytes;
  memory.fill(acc, 0, <usize>rows * rowBytes);
  for (let r = 0; r < rows; r++) {
    store<f32>(at(mrow, r), -Infinity);
    store<f32>(at(lrow, r), 0);
  }
  for (let e = 0; e < n; e++) {
    const j = load<i32>(at(lst, e));
    const ks = load<i32>(at(tileStart, j));
    const kl = load<i32>(at(tileLen, j));
    const kbase = kt + (<usize>load<i32>(at(offsets, j)) << 2);
    for (let c0 = 0; c0 < kl; c0 += KC) {
      const cl = min(KC, kl - c0);
      const chunk = kbase + (<usize>(c0 * D) << 2);
      const vrow = vw + <usize>(ks + c0) * rowBytes;
      for (let r = 0; r < rows; r += QR) {
        groupChunk(q, r, rows, acc, mrow, lrow, sbuf, chunk, vrow, cl, D, scale);
      }
    }
  }
  for (let r = 0; r < rows; r++) {
    const l = load<f32>(at(lrow, r));
    const inv = f32x4.splat(l > 0 ? <f32>1.0 / l : 0); // a row with no key gives 0
    const t = load<i32>(at(order, qs + rb + r));
    const dst = out + ((<usize>t * <usize>strideT + <usize>headOffset) << 2);
    const src = acc + <usize>r * rowBytes;
    for (let d: usize = 0; d < rowBytes; d += 16) {
      v128.store(dst + d, f32x4.mul(v128.load(src + d), inv));
    }
  }
}

/**
 * One key chunk (cl <= KC keys) for the query rows r..r+QR-1 of a block. When fewer than QR
 * rows are left, the missing rows load the block's last row (valid memory) and get P = 0, so
 * their accumulator rows (scratch past `rows`, never stored) do not matter.
 */
function groupChunk(
  q: usize,
  r: i32,
  rows: i32,
  acc: usize,
  mrow: usize,
  lrow: usize,
  sbuf: usize,
  chunk: usize,
  vrow: usize,
  cl: i32,
  D: i32,
  scale: f32,
): void {
  const rowBytes = <usize>D << 2;
  const cp = roundUp(cl, 8);
  const nr = min(QR, rows - r);
  const q0 = q + <usize>r * rowBytes;
  const q1 = q + <usize>min(r + 1, rows - 1) * rowBytes;
  const q2 = q + <usize>min(r + 2, rows - 1) * rowBytes;
  const q3 = q + <usize>min(r + 3, rows - 1) * rowBytes;
  const q4 = q + <usize>min(r + 4, rows - 1) * rowBytes;
  const q5 = q + <usize>min(r + 5, rows - 1) * rowBytes;
  // Scores in log2 units: S * scale * log2(e), so that P = 2^(S - max) (see vexp2).
  const vscale = f32x4.splat(scale * <f32>Math.LOG2E);
  // S = Q K^T: 6 rows x 8 keys per panel, 12 accumulators in registers (in a microbenchmark
  // 6 x 8 ran 10-25% faster than 4 x 8; 7 x 8, 8 x 8 and 4 x 12 ran slower: register spills).
  for (let b = 0; b < cp; b += 8) {
    let panel = chunk + (<usize>(b * D) << 2);
    let a00 = f32x4.splat(0), a01 = f32x4.splat(0);
    let a10 = f32x4.splat(0), a11 = f32x4.splat(0);
    let a20 = f32x4.splat(0), a21 = f32x4.splat(0);
    let a30 = f32x4.splat(0), a31 = f32x4.splat(0);
    let a40 = f32x4.splat(0), a41 = f32x4.splat(0);
    let a50 = f32x4.splat(0), a51 = f32x4.splat(0);
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
      x = v128.load32_splat(q4 + d);
      a40 = f32x4.relaxed_madd(x, k0, a40);
      a41 = f32x4.relaxed_madd(x, k1, a41);
      x = v128.load32_splat(q5 + d);
      a50 = f32x4.relaxed_madd(x, k0, a50);
      a51 = f32x4.relaxed_madd(x, k1, a51);
    }
    const sb = sbuf + (<usize>b << 2);
    v128.store(sb, f32x4.mul(a00, vscale), 0);
    v128.store(sb, f32x4.mul(a01, vscale), 0 + 16);
    v128.store(sb, f32x4.mul(a10, vscale), KC * 4);
    v128.store(sb, f32x4.mul(a11, vscale), KC * 4 + 16);
    v128.store(sb, f32x4.mul(a20, vscale), KC * 8);
    v128.store(sb, f32x4.mul(a21, vscale), KC * 8 + 16);
    v128.store(sb, f32x4.mul(a30, vscale), KC * 12);
    v128.store(sb, f32x4.mul(a31, vscale), KC * 12 + 16);
    v128.store(sb, f32x4.mul(a40, vscale), KC * 16);
    v128.store(sb, f32x4.mul(a41, vscale), KC * 16 + 16);
    v128.store(sb, f32x4.mul(a50, vscale), KC * 20);
    v128.store(sb, f32x4.mul(a51, vscale), KC * 20 + 16);
  }
  // Keys past cl in the last panel are padding: S = -inf, so P = 0.
  for (let j = cl; j < cp; j++) {
    for (let k = 0; k < QR; k++) store<f32>(sbuf + (<usize>(k * KC + j) << 2), -Infinity);
  }
  // Online softmax per real row; a padding row gets P = 0 so that its accumulator row is left
  // untouched.
  const a0 = acc + <usize>r * rowBytes;
  for (let k = 0; k < QR; k++) {
    const s = sbuf + (<usize>(k * KC) << 2);
    if (k < nr) {
      softmaxRow(s, cp, at(mrow, r + k), at(lrow, r + k), a0 + <usize>k * rowBytes, D);
    } else {
      memory.fill(s, 0, <usize>KC << 2);
    }
  }
  const o0 = a0;
  const o1 = a0 + rowBytes;
  const o2 = a0 + 2 * rowBytes;
  const o3 = a0 + 3 * rowBytes;
  const o4 = a0 + 4 * rowBytes;
  const o5 = a0 + 5 * rowBytes;
  // O += P V: 6 rows x 8 dims (2 x v128) per step, then 4 dims for a tail when D % 8 == 4.
  let d: usize = 0;
  for (; d + 32 <= rowBytes; d += 32) {
    let c00 = v128.load(o0 + d), c01 = v128.load(o0 + d, 16);
    let c10 = v128.load(o1 + d), c11 = v128.load(o1 + d, 16);
    let c20 = v128.load(o2 + d), c21 = v128.load(o2 + d, 16);
    let c30 = v128.load(o3 + d), c31 = v128.load(o3 + d, 16);
    let c40 = v128.load(o4 + d), c41 = v128.load(o4 + d, 16);
    let c50 = v128.load(o5 + d), c51 = v128.load(o5 + d, 16);
    let vp = vrow + d;
    let sp = sbuf;
    for (let jj = 0; jj < cl; jj++) {
      const v0 = v128.load(vp);
      const v1 = v128.load(vp, 16);
      vp += rowBytes;
      let x: v128;
      x = v128.load32_splat(sp, 0);
      c00 = f32x4.relaxed_madd(x, v0, c00);
      c01 = f32x4.relaxed_madd(x, v1, c01);
      x = v128.load32_splat(sp, KC * 4);
      c10 = f32x4.relaxed_madd(x, v0, c10);
      c11 = f32x4.relaxed_madd(x, v1, c11);
      x = v128.load32_splat(sp, KC * 8);
      c20 = f32x4.relaxed_madd(x, v0, c20);
      c21 = f32x4.relaxed_madd(x, v1, c21);
      x = v128.load32_splat(sp, KC * 12);
      c30 = f32x4.relaxed_madd(x, v0, c30);
      c31 = f32x4.relaxed_madd(x, v1, c31);
      x = v128.load32_splat(sp, KC * 16);
      c40 = f32x4.relaxed_madd(x, v0, c40);
      c41 = f32x4.relaxed_madd(x, v1, c41);
      x = v128.load32_splat(sp, KC * 20);
      c50 = f32x4.relaxed_madd(x, v0, c50);
      c51 = f32x4.relaxed_madd(x, v1, c51);
      sp += 4;
    }
    v128.store(o0 + d, c00);
    v128.store(o0 + d, c01, 16);
    v128.store(o1 + d, c10);
    v128.store(o1 + d, c11, 16);
    v128.store(o2 + d, c20);
    v128.store(o2 + d, c21, 16);
    v128.store(o3 + d, c30);
    v128.store(o3 + d, c31, 16);
    v128.store(o4 + d, c40);
    v128.store(o4 + d, c41, 16);
    v128.store(o5 + d, c50);
    v128.store(o5 + d, c51, 16);
  }
  if (d < rowBytes) {
    let c0 = v128.load(o0 + d);
    let c1 = v128.load(o1 + d);
    let c2 = v128.load(o2 + d);
    let c3 = v128.load(o3 + d);
    let c4 = v128.load(o4 + d);
    let c5 = v128.load(o5 + d);
    let vp = vrow + d;
    let sp = sbuf;
    for (let jj = 0; jj < cl; jj++) {
      const v0 = v128.load(vp);
      vp += rowBytes;
      c0 = f32x4.relaxed_madd(v128.load32_splat(sp), v0, c0);
      c1 = f32x4.relaxed_madd(v128.load32_splat(sp, KC * 4), v0, c1);
      c2 = f32x4.relaxed_madd(v128.load32_splat(sp, KC * 8), v0, c2);
      c3 = f32x4.relaxed_madd(v128.load32_splat(sp, KC * 12), v0, c3);
      c4 = f32x4.relaxed_madd(v128.load32_splat(sp, KC * 16), v0, c4);
      c5 = f32x4.relaxed_madd(v128.load32_splat(sp, KC * 20), v0, c5);
      sp += 4;
    }
    v128.store(o0 + d, c0);
    v128.store(o1 + d, c1);
    v128.store(o2 + d, c2);
    v128.store(o3 + d, c3);
    v128.store(o4 + d, c4);
    v128.store(o5 + d, c5);
  }
}

/**
 * One row of the online softmax over a chunk: s = the row of S in log2 units (cp entries, -inf
 * past the chunk's keys). With m = *mp the running max and m' = max(m, max s): writes
 * P = 2^(s - m') over the row (0 at the -inf padding), rescales the row's accumulator by
 * alpha = 2^(m - m') (0 on the first chunk,
 * where m = -inf) and sets *lp = *lp * alpha + sum(P), *mp = m'.
 */
function softmaxRow(s: usize, cp: i32, mp: usize, lp: usize, accRow: usize, D: i32): void {
  const m = load<f32>(mp);
  let vmx = f32x4.splat(m);
  for (let j = 0; j < cp; j += 4) vmx = f32x4.pmax(vmx, v128.load(at(s, j)));
  const mx = max(
    max(f32x4.extract_lane(vmx, 0), f32x4.extract_lane(vmx, 1)),
    max(f32x4.extract_lane(vmx, 2), f32x4.extract_lane(vmx, 3)),
  );
  const alpha: f32 = m == mx ? 1 : Mathf.exp((m - mx) * <f32>Math.LN2);
  const vm = f32x4.splat(mx);
  let sum = f32x4.splat(0);
  for (let j = 0; j < cp; j += 4) {
    const p = vexp2(f32x4.sub(v128.load(at(s, j)), vm));
    v128.store(at(s, j), p);
    sum = f32x4.add(sum, p);
  }
  const total = f32x4.extract_lane(sum, 0) + f32x4.extract_lane(sum, 1) +
    f32x4.extract_lane(sum, 2) + f32x4.extract_lane(sum, 3);
  if (alpha != 1) {
    const va = f32x4.splat(alpha);
    for (let d = 0; d < D; d += 4) {
      v128.store(at(accRow, d), f32x4.mul(v128.load(at(accRow, d)), va));
    }
  }
  store<f32>(lp, load<f32>(lp) * alpha + total);
  store<f32>(mp, mx);
}

