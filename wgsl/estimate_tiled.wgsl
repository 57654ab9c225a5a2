// Sampled block importance (src/selection.ts, estimators "sampled" and "hybrid") as two
// register-tiled passes over blocks of sample rows (row-group reductions by subgroup shuffles, or
// through workgroup memory without `subgroups`); the same map as wgsl/estimate_sampled.wgsl (the
// kernel where these tiles do not fit the workgroup memory), by the flash kernels' structure
// instead of one thread per key.
//
// Sample rows: tile i of the plan has SP slots (SP = the sample count rounded up to a power of
// two), slot s holding its s-th sampled query (window-order position from the host's table) where
// s < n_i and a zero row otherwise; rows i*SP .. of a pair, cut into blocks of RT = 4*TM4*RG rows.
// Workgroup = (pair, row block, split); threads form an RG x CG grid, thread (rg, cg) owning the
// block's rows 4*TM4*rg .. (whole tiles, or SPAN row groups a tile) and keys cg + CG*N, N < TN, of each
// chunk of BC = TN*CG keys staged in workgroup memory; S as outer products of Q^T quads and key
// scalars (wgsl/flash_tile.wgsl's layout), scores in the log2 domain, f32 arithmetic.
//   Pass A (PASS_B = 0), split = a range of `span` raster keys (text included): each thread keeps
//     an online (m, l) per row over its keys; at the end the CG lanes of a row group combine
//     them by shuffle-xor butterflies, and lane 0 writes the split's (m, l) of each row to `stat`.
//     No barrier but the chunk staging's.
//   Pass B (PASS_B = 1), split = a range of `span` video tiles j: the rows' (M, Z) from every
//     split's (m, l); per tile j (keys in window order), the sum over its keys of
//     exp2(s - M) / Z per row, reduced over the row group by butterflies at the tile's end; lane
//     0 sums the valid samples of each of its query tiles i and writes P[i][j] as
//     wgsl/estimate_sampled.wgsl does (coefficients, density, the hybrid mix).
// The WebAssembly backend computes the same map (asm/selection.ts `sampledMap`) in another order of
// operations; the masks agree wherever the map has no near-tie at a threshold.

// @if ENABLE_F16
enable f16;
// @endif

// @include storage
// @include estimate_io

// Placeholders (set by the host, see src/webgpu/mask.ts `tiledShape`).
/** Row quads per thread (4*TM4 rows, a multiple of SP). */
const TM4: u32 = 2u;
/** Keys per thread and chunk. */
const TN: u32 = 4u;
/** Sample slots per tile (a power of two). */
const SP: u32 = 2u;
/**
 * Row groups per query tile: 1 where SP <= 4*TM4 (a thread holds whole tiles), else
 * SP / (4*TM4), the row groups of one subgroup (CG * SPAN <= subgroup size).
 */
const SPAN: u32 = 1u;
/**
 * 1: row-group reductions by subgroup shuffles (the device has `subgroups` and a row group is
 * part of one subgroup); 0: through workgroup memory, two barriers per reduction (once per
 * tile in pass B, once at the end of pass A), SPAN = 1.
 */
const SUBGROUPS: u32 = 1u;
/** 0: pass A (row statistics per key split); 1: pass B (mass per tile). */
const PASS_B: u32 = 0u;
/** 1: Q^T in f16 workgroup memory (f16 storage on a shader-f16 device; exact). */
const F16_Q: u32 = 0u;
/** 1: the K chunk in f16 workgroup memory (likewise). */
const F16_K: u32 = 0u;
/** 1: F16_Q or F16_K (the module enables f16). */
const ENABLE_F16: u32 = 0u;
/** Source unroll of the S loop over head-dim vec4 (divides D / 4). */
const UD: u32 = 4u;

// @if F16_Q
alias QTile4 = vec4<f16>;
// @else
alias QTile4 = vec4<f32>;
// @endif
// @if F16_K
alias KTile4 = vec4<f16>;
// @else
alias KTile4 = vec4<f32>;
// @endif

const NEG: f32 = -3.0e38;
const LOG2E: f32 = 1.4426950408889634;

override RG: u32 = 8u;
override CG: u32 = 8u;
override D: u32 = 128u;
override NT: u32 = RG * CG;
override BR4: u32 = TM4 * RG;
override RT: u32 = 4u * BR4;
override BC: u32 = TN * CG;
override D4: u32 = D / 4u;
override KSTR4: u32 = D4 + 1u;

/** Per (pair of the group, row, pass-A split): (m, l) in the log2 domain. */
@group(0) @binding(7) var<storage, read_write> stat: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> p: array<f32>;

/** Q^T of the row block: qt[d * BR4 + rq] = rows 4rq..4rq+3 at dim d. */
var<workgroup> qt: array<QTile4, D * BR4>;
/** The chunk's K rows (stride D4 + 1: conflict-free column reads). */
var<workgroup> kv: array<KTile4, BC * KSTR4>;

// @if SUBGROUPS
/** Max of `x` over the CG lanes of the caller's row group (quad `rq`, lane `cg`). */
fn row_max(x: vec4<f32>, rq: u32, cg: u32) -> vec4<f32> {
  var m = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    m = max(m, subgroupShuffleXor(m, o));
  }
  return m;
}

/** Sum of `x` over the CG lanes of the caller's row group. */
fn row_sum(x: vec4<f32>, rq: u32, cg: u32) -> vec4<f32> {
  var s = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    s += subgroupShuffleXor(s, o);
  }
  return s;
}
// @else
/** Without subgroups: the row group's CG values of row quad rq, through workgroup memory. */
var<workgroup> red: array<vec4<f32>, BR4 * CG>;

/** Max of `x` over the CG threads of row quad `rq` (every thread of the workgroup calls it). */
fn row_max(x: vec4<f32>, rq: u32, cg: u32) -> vec4<f32> {
  workgroupBarrier(); // earlier readers of `red` are done
  red[rq * CG + cg] = x;
  workgroupBarrier();
  var m = red[rq * CG];
  for (var c = 1u; c < CG; c++) {
    m = max(m, red[rq * CG + c]);
  }
  return m;
}

/** Sum of `x` over the CG threads of row quad `rq` (every thread of the workgroup calls it). */
fn row_sum(x: vec4<f32>, rq: u32, cg: u32) -> vec4<f32> {
  workgroupBarrier(); // earlier readers of `red` are done
  red[rq * CG + cg] = x;
  workgroupBarrier();
  var s = red[rq * CG];
  for (var c = 1u; c < CG; c++) {
    s += red[rq * CG + c];
  }
  return s;
}
// @endif

/**
 * Stages a chunk's K rows into `kv` between two barriers (the first: the previous chunk
 * consumed, or Q^T staged): keys first..first+kc, raster tokens in pass A, window-order
 * positions (through `order`) in pass B; zero rows past kc.
 */
fn stage_k(lid: u32, head_off: u32, first: u32, kc: u32) {
  workgroupBarrier();
  for (var e = lid; e < BC * D4; e += NT) {
    let key = e / D4;
    var x = vec4<f32>(0.0);
    if (key < kc) {
      var tok = first + key;
      if (PASS_B != 0u) {
        tok = order[tok];
      }
      x = load4(k[params.base_k + tok * params.s_t + head_off + e % D4]);
    }
    kv[key * KSTR4 + e % D4] = KTile4(x);
  }
  workgroupBarrier();
}

/** Index in `stat` of pass A's split 0 for row `row` (of the group's pair `bh`). */
fn stat_at(bh: u32, row: u32) -> u32 {
  return (bh * params.blocks * RT + row) * params.splits_a;
}

@compute @workgroup_size(NT)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  // @if PASS_B
  let splits = params.splits_b;
  // @else
  let splits = params.splits_a;
  // @endif
  if (wg >= params.nbh * params.blocks * splits) {
    return;
  }
  let split = wg % splits;
  let blk = wg / splits; // bh * blocks + row block
  let bh = blk / params.blocks;
  let row0 = (blk % params.blocks) * RT;
  let pair = params.pair0 + bh;
  let head_off = (pair / params.heads_per_row) * params.s_b + (pair % params.heads_per_row) * params.s_h;
  let rg = lid / CG;
  let cg = lid % CG;
  let scale2 = params.scale * LOG2E;

  // Q^T of the block's rows (zero for absent samples and rows past the last tile).
  for (var e = lid; e < RT * D4; e += NT) {
    let r = e / D4;
    let c4 = e % D4;
    let i = (row0 + r) / SP;
    let slot = (row0 + r) % SP;
    var x = vec4<f32>(0.0);
    if (slot < count_of(i)) {
      let pos = samples[i * params.stride + 1u + slot];
      x = load4(q[params.base_q + order[pos] * params.s_t + head_off + c4]);
    }
    let h = QTile4(x);
    let at = (4u * c4) * BR4 + r / 4u;
    qt[at][r % 4u] = h.x;
    qt[at + BR4][r % 4u] = h.y;
    qt[at + 2u * BR4][r % 4u] = h.z;
    qt[at + 3u * BR4][r % 4u] = h.w;
  }

  // @unroll R TM4
  let rq_R = rg * TM4 + R;
  // @end
  // @unroll N TN
  let key_N = cg + CG * N;
  // @end

  // @if PASS_B
  // The rows' M and 1 / Z from the splits' (m, l); 1 / Z = 0 for absent rows, whose mass is
  // then 0.
  // @unroll R TM4
  var m_R = vec4<f32>(NEG);
  var iz_R = vec4<f32>(0.0);
  // @end
  // @unroll R TM4
  for (var c = 0u; c < 4u; c++) {
    let row = row0 + 4u * rq_R + c;
    let sb = stat_at(bh, row);
    var mm = NEG;
    for (var s = 0u; s < params.splits_a; s++) {
      mm = max(mm, stat[sb + s].x);
    }
    var z = 0.0;
    for (var s = 0u; s < params.splits_a; s++) {
      let ml = stat[sb + s];
      z += ml.y * exp2(ml.x - mm);
    }
    m_R[c] = mm;
    let valid = (row % SP) < count_of(row / SP);
    iz_R[c] = select(0.0, 1.0 / z, valid && z > 0.0);
  }
  // @end
  let j_end = min(params.g, (split + 1u) * params.span_b);
  for (var j = split * params.span_b; j < j_end; j++) {
    let t = tiles[j];
    // @unroll R TM4
    var ps_R = vec4<f32>(0.0);
    // @end
    for (var e0 = 0u; e0 < t.y; e0 += BC) {
      let kc = min(BC, t.y - e0);
      stage_k(lid, head_off, t.x + e0, kc);
      // @include estimate_tiled_s
      // @unroll R TM4
      // @unroll N TN
      ps_R += select(vec4<f32>(0.0), exp2(s_R_N * scale2 - m_R), key_N < kc);
      // @end
      // @end
    }
    // Per row: the tile's mass; per query tile of the thread: the sum over its samples (acc[0]
    // the thread's share where a tile spans row groups).
    var acc = array<f32, 4u * TM4>();
    // @unroll R TM4
    {
      let mass = row_sum(ps_R, rq_R, cg) * iz_R;
      for (var c = 0u; c < 4u; c++) {
        acc[(4u * R + c) / SP] += mass[c];
      }
    }
    // @end
    // A query tile over SPAN row groups (lanes CG apart in one subgroup): their sums added.
    // @if SUBGROUPS
    for (var o = CG; o < CG * SPAN; o <<= 1u) {
      acc[0] += subgroupShuffleXor(acc[0], o);
    }
    // @endif
    if (cg == 0u && rg % SPAN == 0u) {
      for (var u = 0u; u < max(1u, 4u * TM4 / SP); u++) {
        let i = (row0 + 4u * TM4 * rg) / SP + u;
        if (count_of(i) > 0u) {
          let cf = coef[i];
          // Density (budget "tokens", bit 1 of `hybrid`): mass per key token of tile j.
          let est = select(cf.x * acc[u], cf.x * acc[u] * (1.0 / f32(t.y)), (params.hybrid & 2u) != 0u);
          let at = (bh * params.g + i) * params.g + j;
          p[at] = select(est, 0.5 * (cf.y * p[at] + est), (params.hybrid & 1u) != 0u);
        }
      }
    }
  }
  // @else
  // @unroll R TM4
  var m_R = vec4<f32>(NEG);
  var l_R = vec4<f32>(0.0);
  // @end
  let k_end = min(params.tokens, (split + 1u) * params.span_a);
  for (var e0 = split * params.span_a; e0 < k_end; e0 += BC) {
    let kc = min(BC, k_end - e0);
    stage_k(lid, head_off, e0, kc);
    // @include estimate_tiled_s
    // Online (m, l) of the thread's keys; keys past the chunk count nothing.
    // @unroll R TM4
    {
      var mx = m_R;
      // @unroll N TN
      s_R_N = select(vec4<f32>(NEG), s_R_N * scale2, key_N < kc);
      mx = max(mx, s_R_N);
      // @end
      var sum = vec4<f32>(0.0);
      // @unroll N TN
      sum += select(vec4<f32>(0.0), exp2(s_R_N - mx), key_N < kc);
      // @end
      l_R = l_R * exp2(m_R - mx) + sum;
      m_R = mx;
    }
    // @end
  }
  // @unroll R TM4
  {
    let mm = row_max(m_R, rq_R, cg);
    let ll = row_sum(l_R * exp2(m_R - mm), rq_R, cg);
    if (cg == 0u) {
      for (var c = 0u; c < 4u; c++) {
        let row = row0 + 4u * rq_R + c;
        stat[stat_at(bh, row) + split] = vec2<f32>(mm[c], ll[c]);
      }
    }
  }
  // @end
  // @endif
}
