// Block lists from the draft map: for video query tile i of one (batch, head),
// kept(i, j) = P[i][j] >= t || P[i][j] == max_j' P[i][j'] with t the radix-selected threshold;
// list row i = kept j ascending, then the text tiles g .. tiles-1; counts[i] = its length.
// Text query rows (all tiles) are constant and written by the host once per op.
// One workgroup per (batch, head, video query tile): row max by tree reduction, then
// stream compaction in chunks of WG with a workgroup prefix sum (wgsl/list_compact.wgsl).
// P and state hold a group of `nbh` pairs (scratch); their lists are rows pair0 + bh of the piece.

/** Mirrored by LISTS_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  nbh: u32,
  g: u32,
  tiles: u32,
  /** First pair of the group, relative to the piece (rows of counts and lists). */
  pair0: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<f32>;
@group(0) @binding(2) var<storage, read> state: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> lists: array<u32>;

var<workgroup> red: array<f32, WG>;

// @include list_compact

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  let g = params.g;
  if (wg >= params.nbh * g) {
    return;
  }
  let bh = wg / g;
  let i = wg % g;
  let t = bitcast<f32>(state[bh].x);
  let row = (bh * g + i) * g;

  var mx = 0.0;
  for (var j = lid; j < g; j += WG) {
    mx = max(mx, p[row + j]);
  }
  red[lid] = mx;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid < half) {
      red[lid] = max(red[lid], red[lid + half]);
    }
    workgroupBarrier();
  }
  let row_max = red[0];

  let list_row = (params.pair0 + bh) * params.tiles + i;
  var off = 0u;
  for (var c0 = 0u; c0 < g; c0 += WG) {
    let j = c0 + lid;
    var kept = false;
    if (j < g) {
      let x = p[row + j];
      kept = x >= t || x == row_max;
    }
    off += compact(lid, kept, j, list_row * params.tiles + off);
  }
  finish_list(lid, list_row, off, g, params.tiles);
}
