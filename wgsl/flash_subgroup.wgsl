// Flash attention over work items, dense or block-sparse, register-tiled, a row group being one
// subgroup or a part of one: the main kernel for head dims up to 128 on devices with
// `subgroups` (wgsl/flash_tiled.wgsl without them, wgsl/flash_chunked.wgsl for small workgroup
// memory and larger heads). Tile layout, buffers, loads and the shared steps of `main`:
// wgsl/flash_tile.wgsl. What this kernel does its own way:
//   - the row max and l by subgroup reductions (shuffle-xor butterflies over the CG lanes of a
//     row group where CG is smaller than the subgroup: SUB_ROWS), the reductions skipped for a
//     chunk where no lane's score passes its row's running max;
//   - P passed to the P V lanes by subgroupShuffle (no P^T or row partials in workgroup memory);
//   - V in its own buffer `vs`, staged with K (two barriers per chunk), or over K once S is done
//     (V_OVER_K: one barrier more, half the K/V memory);
//   - optionally P V's keys split between the subgroup's halves (KEY_HALVES) and P V in f16
//     arithmetic (F16_PV).

// @include flash_tile

/**
 * 1: V is staged into `kv` once S is done, over the K rows, instead of into its own buffer with
 * K: one barrier more per chunk, K/V memory halved (tiles for 16 KiB devices).
 */
const V_OVER_K: u32 = 0u;
/**
 * 1: in P V the two halves of a subgroup take half the chunk's keys each over DP = 2*CG*TD4
 * dims, summed by one shuffle at the end: head dim 64 with subgroups of 32 keeps every lane busy
 * (without it, half the lanes would hold padding dims).
 */
const KEY_HALVES: u32 = 0u;
/**
 * The device's subgroup size. CG may be a power-of-two divisor of it: a subgroup then holds
 * SUBGROUP_SIZE / CG row groups ("sub-rows"), reduced over their CG lanes by shuffle-xor
 * butterflies, so a lane can own TN > 1 keys of a 32-key chunk and every Q^T load feeds TN times
 * the FMAs.
 */
const SUBGROUP_SIZE: u32 = 1u;
/** 1: CG < SUBGROUP_SIZE (sub-rows); 0: a row group is a whole subgroup. */
const SUB_ROWS: u32 = 0u;
/**
 * 1 (with F16_KV): P V in f16 arithmetic: P rounded to f16 (values in [0, 1]), products with the
 * f16 V summed in f16 over runs of UJ keys, each run then added into the f32 O. Half the
 * shuffles, no V conversions, packed f16 FMAs; the f16 sums stay relative to |P V| of a run,
 * which the normalisation by l divides out (unlike f16 S, whose error is exponentiated).
 */
const F16_PV: u32 = 0u;

// @if F16_PV
/** V as P V multiplies it (f16 with F16_PV). */
fn pv_in(x: Kv4) -> vec4<f16> {
  return x;
}
// @else
fn pv_in(x: Kv4) -> vec4<f32> {
  return vec4<f32>(x);
}
// @endif

/** Max of `x` over the CG lanes of the caller's row group (a subgroup, or a part of one). */
fn row_max(x: vec4<f32>) -> vec4<f32> {
  // @if SUB_ROWS
  var m = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    m = max(m, subgroupShuffleXor(m, o));
  }
  return m;
  // @else
  return subgroupMax(x);
  // @endif
}

/** Sum of `x` over the CG lanes of the caller's row group. */
fn row_sum(x: vec4<f32>) -> vec4<f32> {
  // @if SUB_ROWS
  var s = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    s += subgroupShuffleXor(s, o);
  }
  return s;
  // @else
  return subgroupAdd(x);
  // @endif
}

/** Stride of a V row in vec4: the dims of one subgroup half with KEY_HALVES. */
override DP4: u32 = (CG >> KEY_HALVES) * TD4;
override KV4: u32 = max(BC * KSTR4, BC * DP4);

// @include flash_tile_load

/** The chunk's K rows, then its V rows once S is done with V_OVER_K. */
var<workgroup> kv: array<Kv4, KV4>;
// @if V_OVER_K
// @else
var<workgroup> vs: array<Kv4, BC * DP4>;
// @endif

@compute @workgroup_size(NT)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  // @include flash_item
  // P V's dims and keys of the lane: dims dcol + (CG >> KEY_HALVES) * T; with KEY_HALVES, keys
  // kh.. of the chunk.
  let dcol = cg % (CG >> KEY_HALVES);
  let kh = cg - dcol;
  // Subgroup lane of the row group's first lane (0 unless sub-rows).
  // @if SUB_ROWS
  let sbase = (lid % SUBGROUP_SIZE) - cg;
  // @else
  let sbase = 0u;
  // @endif

  // @include flash_tile_setup

  while (cur.kc > 0u) {
    // @include flash_tile_stage_k
    // @if V_OVER_K
    if (EARLY_V != 0u) {
      // @unroll I VPT
      // @if V_TOKENS_FROM_K
      vp_I = fetch_v_at(cur, lid + NT * I, head_off, kt_I);
      // @else
      vp_I = fetch_v(cur, lid + NT * I, head_off);
      // @endif
      // @end
    }
    // @else
    // @unroll I VPT
    {
      let e = lid + NT * I;
      if (e < BC * DP4) {
        // @if V_TOKENS_FROM_K
        vs[e] = kv_in(fetch_v_at(cur, e, head_off, kt_I));
        // @else
        vs[e] = kv_in(fetch_v(cur, e, head_off));
        // @endif
      }
    }
    // @end
    // @endif
    workgroupBarrier(); // B2: K staged (and V unless V_OVER_K)

    // @include flash_tile_s

    // Online softmax: chunk row max across the CG threads of a row group, then rescale.
    // Lane maxima first: where no lane of the subgroup has a score above its row's running max
    // (most chunks of a long row), the row maxima cannot move, so the reductions, alpha and the
    // rescale are skipped (subgroupAny is uniform over the subgroup); the values are the same.
    var grow = false;
    // @unroll R TM4
    var mx_R = vec4<f32>(NEG);
    // @unroll N TN
    s_R_N = select(s_R_N, vec4<f32>(NEG), key_N >= cur.kc);
    mx_R = max(mx_R, s_R_N);
    // @end
    grow = grow || any(mx_R > m_R);
    // @end
    if (subgroupAny(grow)) {
      // @unroll R TM4
      {
        let m_new = max(m_R, row_max(mx_R));
        let alpha = exp2(m_R - m_new);
        m_R = m_new;
        l_R *= alpha;
        // alpha is exactly 1 where a row's max did not move; the rows of a row group agree, so
        // the branch is uniform there.
        if (any(alpha != vec4<f32>(1.0))) {
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T *= alpha[C];
          // @end
          // @end
        }
      }
      // @end
    }
    // @unroll R TM4
    {
      var sum = vec4<f32>(0.0);
      // @unroll N TN
      s_R_N = exp2(s_R_N - m_R);
      sum += s_R_N;
      // @end
      l_R += sum;
    }
    // @end
    // @if V_OVER_K
    workgroupBarrier(); // B3: K consumed; V goes over it
    // @include flash_tile_stage_v
    workgroupBarrier(); // B4: V staged
    // @endif
    // @include flash_tile_next
    // O += P V: p of key c + CG*N is s_R_N of lane c (keys >= kc have p = 0 and zero V). With
    // KEY_HALVES a lane takes the keys of its subgroup half (kh..) at dims dcol. With F16_PV, P
    // (in [0, 1]) and V are f16 and each run of UJ keys is summed in f16 registers, then added
    // into O.
    // @if F16_PV
    // @unroll R TM4
    // @unroll N TN
    let ph_R_N = vec4<f16>(s_R_N);
    // @end
    // @end
    // @endif
    // @unroll N TN
    for (var c0 = 0u; c0 < (CG >> KEY_HALVES); c0 += UJ) {
      // @if F16_PV
      // @unroll R TM4
      // @unroll C 4
      // @unroll T TD4
      var a_R_C_T = vec4<f16>(0.0);
      // @end
      // @end
      // @end
      // @endif
      // @unroll U UJ
      {
        let c = c0 + U + kh;
        // @unroll T TD4
        // @if V_OVER_K
        let v_T = pv_in(kv[(c + CG * N) * DP4 + dcol + (CG >> KEY_HALVES) * T]);
        // @else
        let v_T = pv_in(vs[(c + CG * N) * DP4 + dcol + (CG >> KEY_HALVES) * T]);
        // @endif
        // @end
        // @unroll R TM4
        {
          // @if F16_PV
          let p = subgroupShuffle(ph_R_N, sbase + c);
          // @unroll C 4
          // @unroll T TD4
          a_R_C_T = fma(vec4<f16>(p[C]), v_T, a_R_C_T);
          // @end
          // @end
          // @else
          let p = subgroupShuffle(s_R_N, sbase + c);
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T = fma(vec4<f32>(p[C]), v_T, o_R_C_T);
          // @end
          // @end
          // @endif
        }
        // @end
      }
      // @end
      // @if F16_PV
      // @unroll R TM4
      // @unroll C 4
      // @unroll T TD4
      o_R_C_T += vec4<f32>(a_R_C_T);
      // @end
      // @end
      // @end
      // @endif
    }
    // @end
    cur = nxt;
  }

  // l = sum of the CG per-thread partials; O / l to the raster position of each row.
  // @if KEY_HALVES
  // The halves' partial sums of O, added (then the lower half stores).
  // @unroll R TM4
  // @unroll C 4
  // @unroll T TD4
  o_R_C_T += subgroupShuffleXor(o_R_C_T, CG >> 1u);
  // @end
  // @end
  // @end
  // @endif
  // @unroll R TM4
  {
    let l = row_sum(l_R);
    let inv = select(vec4<f32>(0.0), 1.0 / l, l > vec4<f32>(0.0));
    if (kh == 0u) {
      // @unroll C 4
      // @unroll T TD4
      store_row(4u * rq_R + C, dcol + (CG >> KEY_HALVES) * T, o_R_C_T, inv[C], rows, row_start,
        head_off);
      // @end
      // @end
    }
  }
  // @end
}
