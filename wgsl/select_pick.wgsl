// Radix select, pick pass: one workgroup per (batch, head). Finds the digit d at `shift` such
// that the candidates with a larger digit number fewer than k and those with digit >= d at
// least k (k = rank still wanted, `keep` in the first pass), appends d to the prefix, subtracts
// the count above from k and clears the histogram for the next pass. After the pass with
// shift = 0 the prefix is the bit pattern of the keep-th largest P (counting multiplicity).

/** Mirrored by PICK_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  nbh: u32,
  shift: u32,
  keep: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> hist: array<u32>;
@group(0) @binding(2) var<storage, read_write> state: array<vec2<u32>>;

// `scan` (wgsl/prefix_sum.wgsl): the histogram scanned from the top digit down,
// scan[x] = sum of bins >= 255 - x.
// @include prefix_sum
var<workgroup> old: vec2<u32>;

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
  let first = params.shift == 24u;
  if (lid == 0u) {
    old = select(state[bh], vec2<u32>(0u, params.keep), first);
  }
  let d = WG - 1u - lid;
  let c = hist[bh * WG + d];
  hist[bh * WG + d] = 0u;
  scan[lid] = c;
  workgroupBarrier();
  prefix_sum(lid);
  storageBarrier();
  let k = old.y;
  let incl = scan[lid];
  let above = incl - c;
  if (above < k && k <= incl) {
    state[bh] = vec2<u32>(old.x | (d << params.shift), k - above);
  }
}
