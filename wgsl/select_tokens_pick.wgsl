// Token-budget threshold, pick pass (after each wgsl/select_tokens.wgsl histogram pass), one
// workgroup per (batch, head): the digit d at `shift` that asm/selection.ts `tokenThresholdBits`
// picks scanning from 255 down, the first non-empty digit whose pairs, added to the pairs above
// it, reach the budget (0 if none does). Appends d to the prefix (state[bh] = (prefix, 0)),
// keeps the pairs above the new prefix's group for the next pass and clears the bins for it.
// After the pass with shift = 0 state[bh].x is the threshold.
//
// In parallel rather than that serial scan: thread t holds digit 255 - t, a scan of the 64-bit
// pair sums gives each digit its pairs at or above it, and the digit picked is the largest that
// is non-empty and reaches the budget (those reaching it are the digits below some bound, as
// the sums only grow downwards), which is the serial scan's stop.

/** Mirrored by TOKENS_PICK_PARAMS in src/webgpu/mask.ts. */
struct Params {
  nbh: u32,
  shift: u32,
  /** The pair budget, a 64-bit integer. */
  budget_lo: u32,
  budget_hi: u32,
}

const WG: u32 = 256u;
/** u32 words of `hist` per (batch, head), as in wgsl/select_tokens.wgsl. */
const BH_WORDS: u32 = 772u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> hist: array<u32>;
@group(0) @binding(2) var<storage, read_write> state: array<vec2<u32>>;

/** Pair sums scanned from digit 255 down (lo, hi words); thread t holds digit 255 - t. */
var<workgroup> slo: array<u32, WG>;
var<workgroup> shi: array<u32, WG>;
/** The digit picked. */
var<workgroup> picked: atomic<u32>;

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
  let d = WG - 1u - lid;
  let shift = params.shift;
  let first = shift == 24u;
  let o = bh * BH_WORDS + d;
  let at = bh * BH_WORDS + 3u * WG;
  let c = hist[o];
  let m_lo = hist[o + WG];
  let m_hi = hist[o + 2u * WG];
  // The pairs above the prefix's group, from the previous pass (read before lid 0 rewrites it).
  let a_lo = select(hist[at], 0u, first);
  let a_hi = select(hist[at + 1u], 0u, first);
  hist[o] = 0u;
  hist[o + WG] = 0u;
  hist[o + 2u * WG] = 0u;
  if (lid == 0u) {
    atomicStore(&picked, 0u);
  }
  // Inclusive scan (Hillis-Steele) of the (lo, hi) sums over threads 0..lid, carry on wrap.
  var lo = m_lo;
  var hi = m_hi;
  slo[lid] = lo;
  shi[lid] = hi;
  workgroupBarrier();
  for (var k = 1u; k < WG; k <<= 1u) {
    var p_lo = 0u;
    var p_hi = 0u;
    if (lid >= k) {
      p_lo = slo[lid - k];
      p_hi = shi[lid - k];
    }
    workgroupBarrier();
    let s = lo + p_lo;
    hi += p_hi + select(0u, 1u, s < lo);
    lo = s;
    slo[lid] = lo;
    shi[lid] = hi;
    workgroupBarrier();
  }
  // With the pairs above: the pairs of the entries whose digit is >= d.
  let i_lo = a_lo + lo;
  let i_hi = a_hi + hi + select(0u, 1u, i_lo < a_lo);
  let reached = i_hi > params.budget_hi ||
    (i_hi == params.budget_hi && i_lo >= params.budget_lo);
  if (c > 0u && reached) {
    atomicMax(&picked, d);
  }
  workgroupBarrier();
  if (d == atomicLoad(&picked)) {
    // The pairs of the digits above d: the inclusive sum less d's own.
    let e_lo = i_lo - m_lo;
    let e_hi = i_hi - m_hi - select(0u, 1u, i_lo < m_lo);
    let prefix = select(state[bh].x, 0u, first);
    state[bh] = vec2<u32>(prefix | (d << shift), 0u);
    hist[at] = e_lo;
    hist[at + 1u] = e_hi;
  }
}
