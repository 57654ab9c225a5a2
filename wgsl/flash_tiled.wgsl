// Flash attention over work items, dense or block-sparse, register-tiled, with the row
// statistics and P through workgroup memory: the kernel for head dims up to 128 on devices
// without `subgroups` (wgsl/flash_subgroup.wgsl with them, wgsl/flash_chunked.wgsl for small
// workgroup memory and larger heads). Tile layout, buffers, loads and the shared steps of
// `main`: wgsl/flash_tile.wgsl. What this kernel adds to workgroup memory:
//   pt  P^T of the chunk: pt[j*PSTR4 + rq] = p of rows 4rq..4rq+3 at key j.
//   red per-row partials (max, then l) of the CG threads of a row group.
// Four barriers per chunk: K staged, partial maxima complete, P and V staged, chunk done.

// @include flash_tile

override DP4: u32 = CG * TD4;
override KV4: u32 = max(BC * KSTR4, BC * DP4);
override PSTR4: u32 = BR4 + 1u;

// @include flash_tile_load

/** The chunk's K rows, then its V rows once S is done. */
var<workgroup> kv: array<Kv4, KV4>;
var<workgroup> pt: array<vec4<f32>, BC * PSTR4>;
var<workgroup> red: array<vec4<f32>, BR4 * CG>;

@compute @workgroup_size(NT)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  // @include flash_item

  // @include flash_tile_setup

  while (cur.kc > 0u) {
    // @include flash_tile_stage_k
    if (EARLY_V != 0u) {
      // @unroll I VPT
      // @if V_TOKENS_FROM_K
      vp_I = fetch_v_at(cur, lid + NT * I, head_off, kt_I);
      // @else
      vp_I = fetch_v(cur, lid + NT * I, head_off);
      // @endif
      // @end
    }
    workgroupBarrier(); // B2: K staged

    // @include flash_tile_s

    // Online softmax: chunk row max across the CG threads of a row group, then rescale.
    // @unroll R TM4
    {
      var mx = vec4<f32>(NEG);
      // @unroll N TN
      s_R_N = select(s_R_N, vec4<f32>(NEG), key_N >= cur.kc);
      mx = max(mx, s_R_N);
      // @end
      red[rq_R * CG + cg] = mx;
    }
    // @end
    workgroupBarrier(); // B3: K consumed, partial maxima complete
    // @unroll R TM4
    {
      var mx = red[rq_R * CG];
      for (var c = 1u; c < CG; c++) {
        mx = max(mx, red[rq_R * CG + c]);
      }
      let m_new = max(m_R, mx);
      let alpha = exp2(m_R - m_new);
      m_R = m_new;
      var sum = vec4<f32>(0.0);
      // @unroll N TN
      let p_N = exp2(s_R_N - m_new);
      pt[key_N * PSTR4 + rq_R] = p_N;
      sum += p_N;
      // @end
      l_R = l_R * alpha + sum;
      // @unroll C 4
      // @unroll T TD4
      o_R_C_T *= alpha[C];
      // @end
      // @end
    }
    // @end
    // @include flash_tile_stage_v
    workgroupBarrier(); // B4: P and V staged

    // @include flash_tile_next

    // O += P V (keys >= kc have p = 0 and zero V).
    for (var j0 = 0u; j0 < BC; j0 += UJ) {
      // @unroll U UJ
      {
        let j = j0 + U;
        // @unroll T TD4
        let v_T = vec4<f32>(kv[j * DP4 + cg + CG * T]);
        // @end
        // @unroll R TM4
        {
          let p = pt[j * PSTR4 + rq_R];
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T = fma(vec4<f32>(p[C]), v_T, o_R_C_T);
          // @end
          // @end
        }
        // @end
      }
      // @end
    }
    cur = nxt;
  }

  // l = sum of the CG per-thread partials; O / l to the raster position of each row.
  workgroupBarrier();
  // @unroll R TM4
  red[rq_R * CG + cg] = l_R;
  // @end
  workgroupBarrier();
  // @unroll R TM4
  {
    var l = vec4<f32>(0.0);
    for (var c = 0u; c < CG; c++) {
      l += red[rq_R * CG + c];
    }
    let inv = select(vec4<f32>(0.0), 1.0 / l, l > vec4<f32>(0.0));
    // @unroll C 4
    // @unroll T TD4
    store_row(4u * rq_R + C, cg + CG * T, o_R_C_T, inv[C], rows, row_start, head_off);
    // @end
    // @end
  }
  // @end
}
