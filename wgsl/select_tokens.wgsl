// Token-budget threshold of the percentile policy (budget "tokens"; definition in
// src/selection.ts), one workgroup per (batch, head) of a mask group: with w(i, j) = len_i * len_j
// the video token pairs of block (i, j), the largest value v of P whose entries >= v hold at
// least `budget` pairs. MSD radix select over the f32 bit patterns (P >= 0 orders like u32), one
// 8-bit digit per pass, with a pair histogram beside the count histogram. Pair sums exceed 32
// bits (HunyuanVideo: 126,720^2 pairs), so each bin is a (lo, hi) pair of u32 atomics: an add
// whose lo wrapped adds 1 to hi, which makes the 64-bit sum exact in any order, as
// asm/selection.ts `tokenThresholdBits` computes it with u64. Writes state[bh] = (threshold, 0);
// wgsl/select_lists.wgsl then keeps P >= threshold and each row's maximum, as for the count
// budget (percentile), or wgsl/select_row.wgsl takes it as rowMass's floor.

/** Mirrored by TOKENS_PARAMS in src/webgpu/mask.ts. */
struct Params {
  nbh: u32,
  g: u32,
  /** The pair budget, a 64-bit integer. */
  budget_lo: u32,
  budget_hi: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<u32>;
/** Per tile: (start, len) in window order; the video tiles come first. */
@group(0) @binding(2) var<storage, read> tiles: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> state: array<vec2<u32>>;

var<workgroup> hc: array<atomic<u32>, WG>;
var<workgroup> hlo: array<atomic<u32>, WG>;
var<workgroup> hhi: array<atomic<u32>, WG>;
/** After each pass: the prefix so far and the pairs above its group (lo, hi). */
var<workgroup> sel: vec3<u32>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let bh = wid.x + wid.y * nwg.x;
  if (bh >= params.nbh) {
    return;
  }
  let g = params.g;
  let n = g * g;
  let base = bh * n;
  if (lid == 0u) {
    sel = vec3<u32>(0u, 0u, 0u);
  }
  var known = 0u;
  for (var ps = 0u; ps < 4u; ps++) {
    let shift = 24u - 8u * ps;
    atomicStore(&hc[lid], 0u);
    atomicStore(&hlo[lid], 0u);
    atomicStore(&hhi[lid], 0u);
    workgroupBarrier();
    let prefix = sel.x;
    // A thread sums a run of entries with the same digit in registers and adds the run to the
    // bins when the digit changes: most entries of a map share their top digits (the first
    // pass sees a few exponents), and 256 threads adding to one bin would serialise.
    var cur = 0u;
    var c_n = 0u;
    var c_lo = 0u;
    var c_hi = 0u;
    // One step past the end (e >= n) flushes the last run.
    for (var e = lid; e < n + WG; e += WG) {
      var hit = false;
      var d = 0u;
      var w = 0u;
      if (e < n) {
        let x = p[base + e];
        if ((x & known) == prefix) {
          hit = true;
          d = (x >> shift) & 0xffu;
          w = tiles[e / g].y * tiles[e % g].y;
        }
      }
      if ((e >= n || (hit && d != cur)) && c_n > 0u) {
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
    if (lid == 0u) {
      var a_lo = sel.y;
      var a_hi = sel.z;
      var d = 255u;
      loop {
        let c = atomicLoad(&hc[d]);
        let s_lo = a_lo + atomicLoad(&hlo[d]);
        let s_hi = a_hi + atomicLoad(&hhi[d]) + select(0u, 1u, s_lo < a_lo);
        let reached = s_hi > params.budget_hi ||
          (s_hi == params.budget_hi && s_lo >= params.budget_lo);
        if ((c > 0u && reached) || d == 0u) {
          break;
        }
        a_lo = s_lo;
        a_hi = s_hi;
        d -= 1u;
      }
      sel = vec3<u32>(prefix | (d << shift), a_lo, a_hi);
    }
    known |= 0xffu << shift;
    workgroupBarrier();
  }
  if (lid == 0u) {
    state[bh] = vec2<u32>(sel.x, 0u);
  }
}
