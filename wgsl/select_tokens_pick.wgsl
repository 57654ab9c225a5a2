// Token-budget threshold, pick pass (after each wgsl/select_tokens.wgsl histogram pass), one
// workgroup per (batch, head): scans the digits at `shift` from 255 down, adding their pairs to
// the pairs above the prefix, and stops at the first non-empty digit d whose pairs reach the
// budget (or at 0), as asm/selection.ts `tokenThresholdBits`; appends d to the prefix
// (state[bh] = (prefix, 0)), keeps the pairs above the new prefix's group for the next pass
// and clears the bins for it. After the pass with shift = 0 state[bh].x is the threshold.

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

var<workgroup> hc: array<u32, WG>;
var<workgroup> hlo: array<u32, WG>;
var<workgroup> hhi: array<u32, WG>;

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
  // The bins into workgroup memory in one coalesced load each (the scan below is serial).
  let o = bh * BH_WORDS + lid;
  hc[lid] = hist[o];
  hlo[lid] = hist[o + WG];
  hhi[lid] = hist[o + 2u * WG];
  hist[o] = 0u;
  hist[o + WG] = 0u;
  hist[o + 2u * WG] = 0u;
  workgroupBarrier();
  if (lid == 0u) {
    let shift = params.shift;
    let first = shift == 24u;
    let at = bh * BH_WORDS + 3u * WG;
    var a_lo = select(hist[at], 0u, first);
    var a_hi = select(hist[at + 1u], 0u, first);
    let prefix = select(state[bh].x, 0u, first);
    var d = 255u;
    loop {
      let c = hc[d];
      let s_lo = a_lo + hlo[d];
      let s_hi = a_hi + hhi[d] + select(0u, 1u, s_lo < a_lo);
      let reached = s_hi > params.budget_hi ||
        (s_hi == params.budget_hi && s_lo >= params.budget_lo);
      if ((c > 0u && reached) || d == 0u) {
        break;
      }
      a_lo = s_lo;
      a_hi = s_hi;
      d -= 1u;
    }
    state[bh] = vec2<u32>(prefix | (d << shift), 0u);
    hist[at] = a_lo;
    hist[at + 1u] = a_hi;
  }
}
