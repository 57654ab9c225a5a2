    // Step of wgsl/estimate_tiled.wgsl's chunk loops, included once K is staged: S = Q K^T of
    // the chunk (unscaled) into s_R_N, rows 4*rq_R.. x key key_N, as outer products per dim of
    // Q^T quads and key scalars. Explicit initialisers: naga does not re-zero a `var` in a loop.
    // @unroll R TM4
    // @unroll N TN
    var s_R_N = vec4<f32>(0.0);
    // @end
    // @end
    for (var d0 = 0u; d0 < D4; d0 += UD) {
      // @unroll U UD
      {
        let d4 = d0 + U;
        // @unroll N TN
        let k_N = vec4<f32>(kv[key_N * KSTR4 + d4]);
        // @end
        // @unroll I 4
        // @unroll R TM4
        {
          let qv = vec4<f32>(qt[(4u * d4 + I) * BR4 + rq_R]);
          // @unroll N TN
          s_R_N = fma(qv, vec4<f32>(k_N[I]), s_R_N);
          // @end
        }
        // @end
        // @end
      }
      // @end
    }
