// deno-fmt-ignore-file: deno fmt drops AssemblyScript's @inline decorators.
// The per-geometry plan (token order and tiles), the exact block-mask selection and the block
// lists. Every table is an integer table written through raw pointers that the host allocated
// with `alloc` (asm/memory.ts). See docs/spec.md, "The plan", for the contract.

/** Text tokens per text tile; mirrors TEXT_TILE of src/validate.ts. */
@inline export const TEXT_TILE: i32 = 128;

/**
 * Fills the token order and the tile table of one geometry.
 *
 * Window order: video tokens window by window (frame, window row, window column, then row and
 * column inside the window); text tokens keep their place (`textBefore` != 0: positions
 * 0..text-1, else the end). Tile `t < g` is window `t` in draft numbering, tiles `g..` are runs
 * of TEXT_TILE text tokens.
 *
 * order, inverse: i32[tokens]; tileStart, tileLen: i32[g + ceil(text / TEXT_TILE)].
 * Returns the largest tile length.
 */
export function planBuild(
  frames: i32,
  height: i32,
  width: i32,
  text: i32,
  textBefore: i32,
  poolH: i32,
  poolW: i32,
  order: usize,
  inverse: usize,
  tileStart: usize,
  tileLen: usize,
): i32 {
  const nh = (height + poolH - 1) / poolH;
  const nw = (width + poolW - 1) / poolW;
  const g = frames * nh * nw;
  const video = frames * height * width;
  const videoBase = textBefore != 0 ? text : 0;
  const textBase = textBefore != 0 ? 0 : video;
  let maxLen = 0;
  let p = videoBase;
  for (let f = 0; f < frames; f++) {
    for (let wr = 0; wr < nh; wr++) {
      const r0 = wr * poolH;
      const r1 = min(height, r0 + poolH);
      for (let wc = 0; wc < nw; wc++) {
        const c0 = wc * poolW;
        const c1 = min(width, c0 + poolW);
        const t = (f * nh + wr) * nw + wc;
        const len = (r1 - r0) * (c1 - c0);
        store<i32>(tileStart + (<usize>t << 2), p);
        store<i32>(tileLen + (<usize>t << 2), len);
        maxLen = max(maxLen, len);
        for (let r = r0; r < r1; r++) {
          const rowBase = videoBase + (f * height + r) * width;
          for (let c = c0; c < c1; c++) {
            const raster = rowBase + c;
            store<i32>(order + (<usize>p << 2), raster);
            store<i32>(inverse + (<usize>raster << 2), p);
            p++;
          }
        }
      }
    }
  }
  assert(p == videoBase + video);
  for (let i = 0; i < text; i++) {
    const x = textBase + i;
    store<i32>(order + (<usize>x << 2), x);
    store<i32>(inverse + (<usize>x << 2), x);
  }
  const textTiles = (text + TEXT_TILE - 1) / TEXT_TILE;
  for (let k = 0; k < textTiles; k++) {
    const len = min(TEXT_TILE, text - k * TEXT_TILE);
    store<i32>(tileStart + (<usize>(g + k) << 2), textBase + k * TEXT_TILE);
    store<i32>(tileLen + (<usize>(g + k) << 2), len);
    maxLen = max(maxLen, len);
  }
  return maxLen;
}

/** Histogram of one radix digit (8 bits). */
const HIST: usize = memory.data(256 * 4, 16);

/**
 * The keep-th largest of `n` non-negative f32 values (1 <= keep <= n), returned as its bit
 * pattern. Non-negative floats order like their u32 bit patterns, so an MSD radix select over
 * the bits, one 8-bit digit per pass, is exact (ties counted with multiplicity).
 * Algorithm: radix select as in Alabi, Blanchard, Gordon, Steinbach, "Fast K-selection
 * algorithms for graphics processing units" (ACM JEA 17, 2012), and PyTorch's
 * `radixSelect` (aten/src/ATen/native/cuda/SortingRadixSelect.cuh).
 */
export function kthLargestBits(p: usize, n: u32, keep: u32): u32 {
  assert(keep >= 1 && keep <= n);
  let prefix: u32 = 0;
  let known: u32 = 0; // bits of the answer fixed so far
  let k = keep; // rank still to find among values matching `prefix`
  for (let shift: u32 = 24;; shift -= 8) {
    memory.fill(HIST, 0, 256 * 4);
    for (let i: u32 = 0; i < n; i++) {
      const x = load<u32>(p + (<usize>i << 2));
      if ((x & known) == prefix) {
        const h = HIST + (<usize>((x >> shift) & 255) << 2);
        store<u32>(h, load<u32>(h) + 1);
      }
    }
    let digit: u32 = 255;
    for (;; digit--) {
      const c = load<u32>(HIST + (<usize>digit << 2));
      if (k <= c) break;
      k -= c;
      assert(digit > 0);
    }
    prefix |= digit << shift;
    known |= <u32>255 << shift;
    if (shift == 0) break;
  }
  return prefix;
}

/**
 * Block mask of one (batch, head): `mask[i*g+j] = 1` where P[i][j] >= t (t the keep-th largest
 * entry of P) or P[i][j] is the largest entry of row i. p: f32[g*g] (>= 0), mask: u8[g*g].
 * Returns the number of kept entries.
 */
export function selectMask(p: usize, g: i32, keep: i32, mask: usize): i32 {
  return maskAtThreshold(p, g, kthLargestBits(p, <u32>g * <u32>g, <u32>keep), mask);
}

/**
 * `mask[i*g+j] = 1` where the bits of P[i][j] are >= t or P[i][j] is the largest entry of row i
 * (every row keeps its maximum): the mask of a threshold, for every whole-map policy. Returns
 * the number of kept entries.
 */
export function maskAtThreshold(p: usize, g: i32, t: u32, mask: usize): i32 {
  let kept = 0;
  for (let i = 0; i < g; i++) {
    const row = p + ((<usize>i * <usize>g) << 2);
    let rowMax: u32 = 0;
    for (let j = 0; j < g; j++) rowMax = max(rowMax, load<u32>(row + (<usize>j << 2)));
    const out = mask + <usize>i * <usize>g;
    for (let j = 0; j < g; j++) {
      const x = load<u32>(row + (<usize>j << 2));
      const on = x >= t || x == rowMax;
      store<u8>(out + <usize>j, <u8>on);
      kept += <i32>on;
    }
  }
  return kept;
}

/**
 * Block lists from a mask: video query tile i (< g) visits its kept video tiles in increasing
 * order, then every text tile; text query tiles visit every tile. count: i32[tiles],
 * list: i32[tiles * tiles] (row t holds count[t] tile ids), mask: u8[g*g].
 */
export function maskToSchedule(mask: usize, g: i32, tiles: i32, count: usize, list: usize): void {
  for (let i = 0; i < tiles; i++) {
    const row = list + ((<usize>i * <usize>tiles) << 2);
    let c = 0;
    if (i < g) {
      const m = mask + <usize>i * <usize>g;
      for (let j = 0; j < g; j++) {
        if (load<u8>(m + <usize>j) != 0) {
          store<i32>(row + (<usize>c << 2), j);
          c++;
        }
      }
      for (let j = g; j < tiles; j++) {
        store<i32>(row + (<usize>c << 2), j);
        c++;
      }
    } else {
      for (let j = 0; j < tiles; j++) store<i32>(row + (<usize>j << 2), j);
      c = tiles;
    }
    store<i32>(count + (<usize>i << 2), c);
  }
}

/** Work items of `rowsPerItem` query rows or fewer: see `workItems` in src/plan.ts. */
export function workItemCount(tileLen: usize, tiles: i32, rowsPerItem: i32): i32 {
  let n = 0;
  for (let t = 0; t < tiles; t++) {
    n += (load<i32>(tileLen + (<usize>t << 2)) + rowsPerItem - 1) / rowsPerItem;
  }
  return n;
}

/**
 * Writes (tile, rowStart, rows) triples, tiles in increasing order, each tile cut into pieces
 * of `rowsPerItem` rows from its first row; rowStart is a window-order position. out: i32[3 *
 * workItemCount(...)].
 */
export function workItemsFill(
  tileStart: usize,
  tileLen: usize,
  tiles: i32,
  rowsPerItem: i32,
  out: usize,
): void {
  let w = out;
  for (let t = 0; t < tiles; t++) {
    const s = load<i32>(tileStart + (<usize>t << 2));
    const len = load<i32>(tileLen + (<usize>t << 2));
    for (let r = 0; r < len; r += rowsPerItem) {
      store<i32>(w, t);
      store<i32>(w + 4, s + r);
      store<i32>(w + 8, min(rowsPerItem, len - r));
      w += 12;
    }
  }
}

/** `planPieces`: one batch element (BSHD) or one head (BHSD) of q exceeds `maxBytes`. */
@inline export const PIECES_UNIT_TOO_LARGE: i32 = -1;
/** `planPieces`: the internal buffers of one batch element (BSHD) or head (BHSD) exceed it. */
@inline export const PIECES_INTERNAL_TOO_LARGE: i32 = -2;
/** `planPieces`: more than 2^31 - 1 pieces. */
@inline export const PIECES_TOO_MANY: i32 = -3;
/** f64 slots per piece written by `planPieces`. */
@inline export const PIECE_SLOTS: i32 = 5;

/**
 * Splits an op over q/k/v/out (`batch x tokens x heads x headDim`, `elemBytes` per element) into
 * as few pieces as fit one storage binding of `maxBytes` bytes. A piece is a run of consecutive
 * units whose elements form one contiguous range: whole batch elements when `bshd` != 0 (BSHD
 * interleaves the heads along the tokens), single heads otherwise (BHSD). Each (batch, head) pair
 * of a piece also has `perPairBytes` of internal buffers (draft map, block lists), which must fit
 * the same limit together.
 *
 * Byte counts and element offsets exceed 2^32 for large tensors, so they are computed in f64
 * (exact below 2^53, as in the host's numbers) and written as f64.
 *
 * sizes: f64[2], always written: bytes of one unit of q, bytes of one unit's internal buffers.
 * out: 0 to count only, else f64[PIECE_SLOTS * count]: per piece its first (batch, head) pair
 * `b * heads + h`, its pair count, the kernels' `heads_per_row`, its first element and its
 * element count.
 * Returns the piece count, or PIECES_UNIT_TOO_LARGE, PIECES_INTERNAL_TOO_LARGE, PIECES_TOO_MANY.
 */
export function planPieces(
  batch: i32,
  tokens: i32,
  heads: i32,
  headDim: i32,
  elemBytes: i32,
  bshd: i32,
  maxBytes: f64,
  perPairBytes: f64,
  sizes: usize,
  out: usize,
): i32 {
  assert(batch >= 1 && tokens >= 1 && heads >= 1 && headDim >= 1 && elemBytes >= 1);
  assert(perPairBytes >= 0 && perPairBytes < Infinity);
  const B = <f64>batch;
  const H = <f64>heads;
  const pairsPerUnit = bshd != 0 ? H : 1.0;
  const unitElems = pairsPerUnit * <f64>tokens * <f64>headDim;
  const unitBytes = unitElems * <f64>elemBytes;
  const units = bshd != 0 ? B : B * H;
  const internal = pairsPerUnit * perPairBytes;
  store<f64>(sizes, unitBytes);
  store<f64>(sizes + 8, internal);
  if (unitBytes > maxBytes) return PIECES_UNIT_TOO_LARGE;
  if (internal > maxBytes) return PIECES_INTERNAL_TOO_LARGE;
  let perPiece = min(units, Math.floor(maxBytes / unitBytes));
  if (internal > 0) perPiece = min(perPiece, Math.floor(maxBytes / internal));
  const count = Math.ceil(units / perPiece);
  if (count > <f64>i32.MAX_VALUE) return PIECES_TOO_MANY;
  if (out != 0) {
    let w = out;
    for (let u = 0.0; u < units; u += perPiece) {
      const n = min(perPiece, units - u);
      const nbh = n * pairsPerUnit;
      store<f64>(w, u * pairsPerUnit);
      store<f64>(w + 8, nbh);
      store<f64>(w + 16, bshd != 0 ? H : nbh);
      store<f64>(w + 24, u * unitElems);
      store<f64>(w + 32, n * unitElems);
      w += <usize>PIECE_SLOTS << 3;
    }
    assert(w == out + ((<usize>count * <usize>PIECE_SLOTS) << 3));
  }
  return <i32>count;
}
