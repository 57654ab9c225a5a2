// Token-budget threshold of the percentile policy (budget "tokens"; definition in
// src/selection.ts), histogram pass: with w(i, j) = len_i * len_j the video token pairs of block
// (i, j), the threshold is the largest value v of P whose entries >= v hold at least `budget`
// pairs. MSD radix select over the f32 bit patterns (P >= 0 orders like u32), one 8-bit digit
// per pass, shift = 24, 16, 8, 0, each pass this histogram then wgsl/select_tokens_pick.wgsl
// (which appends the digit to state[bh] = (prefix, 0); after the last pass the threshold, read
// by wgsl/select_lists.wgsl or, as rowMass's floor, wgsl/select_row.wgsl).
//
// A workgroup takes `chunk` entries of one (batch, head) (`chunks` per map, so a large map
// spreads over many workgroups), counts the entries under the prefix and sums their pairs per
// digit in workgroup memory, then adds its non-zero bins to the map's global bins. Pair sums
// exceed 32 bits (HunyuanVideo: 126,720^2 pairs), so a pair bin is a (lo, hi) pair of u32
// atomics: an add whose lo wrapped adds 1 to hi, which makes the 64-bit sum exact in any order,
// as asm/selection.ts `tokenThresholdBits` computes it with u64.

/** Mirrored by TOKENS_PARAMS in src/webgpu/mask.ts. */
struct Params {
  nbh: u32,
  g: u32,
  /** Workgroups per map, each `chunk` entries (the last one fewer). */
  chunks: u32,
  chunk: u32,
  shift: u32,
}

const WG: u32 = 256u;
/**
 * u32 words of `hist` per (batch, head): 256 counts, 256 pair sums' lo, 256 their hi, then the
 * pairs above the prefix (lo, hi) kept by the pick pass, and 2 spare (TOKENS_WORDS on the host).
 */
const BH_WORDS: u32 = 772u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<u32>;
/** Per tile: (start, len) in window order; the video tiles come first. */
@group(0) @binding(2) var<storage, read> tiles: array<vec2<u32>>;
/** Per (batch, head): (prefix, 0), written by select_tokens_pick. */
@group(0) @binding(3) var<storage, read> state: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> hist: array<atomic<u32>>;

var<workgroup> hc: array<atomic<u32>, WG>;
var<workgroup> hlo: array<atomic<u32>, WG>;
var<workgroup> hhi: array<atomic<u32>, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  if (wg >= params.nbh * params.chunks) {
    return;
  }
  let bh = wg / params.chunks;
  let g = params.g;
  let n = g * g;
  let e0 = (wg % params.chunks) * params.chunk;
  let e1 = min(e0 + params.chunk, n);
  let shift = params.shift;
  let first = shift == 24u;
  // The first pass has no prefix; `<< 32` would wrap to `<< 0`, hence the select.
  let known = select(0xffffffffu << (shift + 8u), 0u, first);
  let prefix = select(state[bh].x, 0u, first);
  atomicStore(&hc[lid], 0u);
  atomicStore(&hlo[lid], 0u);
  atomicStore(&hhi[lid], 0u);
  workgroupBarrier();
  let base = bh * n;
  // A thread sums a run of entries with the same digit in registers and adds the run to the
  // bins when the digit changes: most entries of a map share their top digits (the first pass
  // sees a few exponents), and 256 threads adding to one bin would serialise.
  var cur = 0u;
  var c_n = 0u;
  var c_lo = 0u;
  var c_hi = 0u;
  // One step past the chunk (e >= e1) flushes the last run.
  for (var e = e0 + lid; e < e1 + WG; e += WG) {
    var hit = false;
    var d = 0u;
    var w = 0u;
    if (e < e1) {
      let x = p[base + e];
      if ((x & known) == prefix) {
        hit = true;
        d = (x >> shift) & 0xffu;
        w = tiles[e / g].y * tiles[e % g].y;
      }
    }
    if ((e >= e1 || (hit && d != cur)) && c_n > 0u) {
      atomicAdd(&hc[cur], c_n);
      let old = atomicAdd(&hlo[cur], c_lo);
      atomicAdd(&hhi[cur], c_hi + select(0u, 1u, old > 0xffffffffu - c_lo));
      c_n = 0u;
      c_lo = 0u;
      c_hi = 0u;
    }
    if (hit) {
      cur = d;
      c_n += 1u;
      let lo = c_lo + w;
      c_hi += select(0u, 1u, lo < c_lo);
      c_lo = lo;
    }
  }
  workgroupBarrier();
  // Bin lid into the map's bins, with the same carry.
  let c = atomicLoad(&hc[lid]);
  if (c != 0u) {
    let o = bh * BH_WORDS + lid;
    atomicAdd(&hist[o], c);
    let lo = atomicLoad(&hlo[lid]);
    let old = atomicAdd(&hist[o + WG], lo);
    let hi = atomicLoad(&hhi[lid]) + select(0u, 1u, old > 0xffffffffu - lo);
    if (hi != 0u) {
      atomicAdd(&hist[o + 2u * WG], hi);
    }
  }
}
