// Row policies (rowTopK, rowMass; definitions in src/selection.ts) and the block lists of their
// mask, one workgroup per (batch, head, video query tile i). Exactly what asm/selection.ts
// `selectRows` computes: every comparison is on the f32 bit patterns (P >= 0 orders like u32)
// and every sum is of integers, so the summation order (atomics here) does not matter.
// 1. rowTopK threshold t: the k-th largest bit pattern of the row (skipped when k == g), by MSD
//    radix select, one 8-bit digit per pass, histogram in workgroup memory.
// 2. rowMass threshold u (when `mass` != 0): masses w(x) = floor(min(x, 1) * 2^22) as u32,
//    Z = sum of w, T = ceil(tau * f32(Z)); u = the largest value v whose cumulative mass
//    (sum of w over the entries >= v) reaches T: radix select with a mass histogram beside the
//    count histogram; per pass, the first digit from the top with a non-empty bucket whose mass
//    plus the mass above reaches T.
// 3. kept(i, j) = bits(P[i][j]) >= max(t, u); list row i = kept j ascending, then the text
//    tiles; compaction by wgsl/list_compact.wgsl.
//    With `floor` != 0 (rowMass under budget "tokens"; rowTopK off, k = g) also >= min(f,
//    rowMax) with f = state[bh].x, the whole map's token-budget threshold that
//    wgsl/select_tokens.wgsl wrote just before (asm/selection.ts `selectRowMassTokens`).
// P holds a group of `nbh` pairs (scratch); their lists are rows pair0 + bh of the piece.

/** Mirrored by ROW_PARAMS in src/webgpu/mask.ts. */
struct Params {
  nbh: u32,
  g: u32,
  tiles: u32,
  /** rowTopK's entries per row (rowMass's cap). */
  k: u32,
  /** 1: apply the rowMass threshold too. */
  mass: u32,
  tau: f32,
  /** First pair of the group, relative to the piece (rows of counts and lists). */
  pair0: u32,
  /** 1: apply the token-budget floor from `state` too. */
  floor: u32,
}

const WG: u32 = 256u;
const MASS_SCALE: f32 = 4194304.0;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> lists: array<u32>;
/** Per pair of the group: (token-budget threshold, unused), read when `floor` != 0. */
@group(0) @binding(4) var<storage, read> state: array<vec2<u32>>;
/** Per tile: (start, len); read when `floor` != 0. */
@group(0) @binding(5) var<storage, read> tiles: array<vec2<u32>>;

var<workgroup> hc: array<atomic<u32>, WG>;
var<workgroup> hm: array<atomic<u32>, WG>;
/**
 * Inclusive scans from the top digit down: index x holds the sums over digits >= 255 - x, of
 * the counts in `scan` (declared by wgsl/prefix_sum.wgsl, reused for the compaction) and of the
 * masses in `sm`.
 */
var<workgroup> sm: array<u32, WG>;
var<workgroup> pick: atomic<u32>;
var<workgroup> zsum: atomic<u32>;
var<workgroup> rmax: atomic<u32>;

// @include list_compact

/** Quantised mass of entry j; under the token budget (`floor`) times the key block's tokens. */
fn mass_of(bits: u32, j: u32) -> u32 {
  var w = 1u;
  if (params.floor != 0u) {
    w = tiles[j].y;
  }
  return u32(floor(min(bitcast<f32>(bits), 1.0) * MASS_SCALE)) * w;
}

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
  let row = (bh * g + i) * g;

  var t = 0u;
  for (var mode = 0u; mode < 2u; mode++) {
    // Uniform: params only.
    let on = (mode == 0u && params.k < g) || (mode == 1u && params.mass != 0u);
    if (!on) {
      continue;
    }
    var goal = 0u;
    if (mode == 1u) {
      if (lid == 0u) {
        atomicStore(&zsum, 0u);
      }
      workgroupBarrier();
      var z = 0u;
      for (var j = lid; j < g; j += WG) {
        z += mass_of(p[row + j], j);
      }
      atomicAdd(&zsum, z);
      workgroupBarrier();
      goal = u32(ceil(params.tau * f32(atomicLoad(&zsum))));
    }
    var prefix = 0u;
    var known = 0u;
    var rank = params.k; // rowTopK: rank still wanted among the prefix group
    var above = 0u; // rowMass: mass above the prefix group
    for (var ps = 0u; ps < 4u; ps++) {
      let shift = 24u - 8u * ps;
      atomicStore(&hc[lid], 0u);
      atomicStore(&hm[lid], 0u);
      if (lid == 0u) {
        atomicStore(&pick, WG);
      }
      workgroupBarrier();
      for (var j = lid; j < g; j += WG) {
        let x = p[row + j];
        if ((x & known) == prefix) {
          let d = (x >> shift) & 0xffu;
          atomicAdd(&hc[d], 1u);
          if (mode == 1u) {
            atomicAdd(&hm[d], mass_of(x, j));
          }
        }
      }
      workgroupBarrier();
      let c = atomicLoad(&hc[WG - 1u - lid]);
      let m = atomicLoad(&hm[WG - 1u - lid]);
      scan[lid] = c;
      sm[lid] = m;
      workgroupBarrier();
      for (var stride = 1u; stride < WG; stride *= 2u) {
        var xc = scan[lid];
        var xm = sm[lid];
        if (lid >= stride) {
          xc += scan[lid - stride];
          xm += sm[lid - stride];
        }
        workgroupBarrier();
        scan[lid] = xc;
        sm[lid] = xm;
        workgroupBarrier();
      }
      var hit = false;
      if (mode == 0u) {
        hit = scan[lid] >= rank;
      } else {
        hit = c > 0u && above + sm[lid] >= goal;
      }
      if (hit) {
        atomicMin(&pick, lid);
      }
      workgroupBarrier();
      let x0 = min(atomicLoad(&pick), WG - 1u);
      let digit = WG - 1u - x0;
      // Counts and masses of the buckets above the chosen one.
      rank -= scan[x0] - atomicLoad(&hc[digit]);
      above += sm[x0] - atomicLoad(&hm[digit]);
      prefix |= digit << shift;
      known |= 0xffu << shift;
      workgroupBarrier(); // everyone has read scan, sm, hc, hm before the next pass clears them
    }
    t = max(t, prefix);
  }
  if (params.floor != 0u) {
    if (lid == 0u) {
      atomicStore(&rmax, 0u);
    }
    workgroupBarrier();
    var mx = 0u;
    for (var j = lid; j < g; j += WG) {
      mx = max(mx, p[row + j]);
    }
    atomicMax(&rmax, mx);
    workgroupBarrier();
    t = max(t, min(state[bh].x, atomicLoad(&rmax)));
  }

  let list_row = (params.pair0 + bh) * params.tiles + i;
  var off = 0u;
  for (var c0 = 0u; c0 < g; c0 += WG) {
    let j = c0 + lid;
    var kept = false;
    if (j < g) {
      kept = p[row + j] >= t;
    }
    off += compact(lid, kept, j, list_row * params.tiles + off);
  }
  finish_list(lid, list_row, off, g, params.tiles);
}
