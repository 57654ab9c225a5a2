    // Step of the chunk loop of the register-tiled kernels (see wgsl/flash_tile.wgsl), included
    // by `// @include flash_tile_s` once K is staged: S = Q K^T of the chunk into s_R_N.
    // S = Q K^T (log2 domain): per dim, outer products of Q^T quads and key scalars.
    // Explicit initialisers in loops: naga does not re-zero an uninitialised `var` there.
    // @unroll R TM4
    // @unroll N TN
    var s_R_N = vec4<f32>(0.0);
    // @end
    // @end
    for (var d0 = 0u; d0 < D4; d0 += UD) {
      // @if F16_S
      // @unroll R TM4
      // @unroll N TN
      var h_R_N = vec4<f16>(0.0);
      // @end
      // @end
      // @endif
      // @unroll U UD
      {
        let d4 = d0 + U;
        // @unroll N TN
        // @if F16_S
        let k_N = kv[key_N * KSTR4 + kcol(key_N, d4)];
        // @else
        let k_N = vec4<f32>(kv[key_N * KSTR4 + kcol(key_N, d4)]);
        // @endif
        // @end
        // @if PACKED_QT
        // @unroll I 4
        {
          let w = qt8[(4u * d4 + I) * RG + rg];
          let qa = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
          let qb = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
          // @unroll N TN
          s_0_N = fma(qa, vec4<f32>(k_N[I]), s_0_N);
          s_1_N = fma(qb, vec4<f32>(k_N[I]), s_1_N);
          // @end
        }
        // @end
        // @else
        // @unroll I 4
        // @unroll R TM4
        {
          // @if F16_S
          let qv = qt[(4u * d4 + I) * BR4 + rq_R];
          // @unroll N TN
          h_R_N = fma(qv, vec4<f16>(k_N[I]), h_R_N);
          // @end
          // @else
          let qv = vec4<f32>(qt[(4u * d4 + I) * BR4 + rq_R]);
          // @unroll N TN
          s_R_N = fma(qv, vec4<f32>(k_N[I]), s_R_N);
          // @end
          // @endif
        }
        // @end
        // @end
        // @endif
      }
      // @end
      // @if F16_S
      // @unroll R TM4
      // @unroll N TN
      s_R_N += vec4<f32>(h_R_N);
      // @end
      // @end
      // @endif
    }

    // @if F16_QT
    // @unroll R TM4
    // @unroll N TN
    s_R_N *= params.scale_log2;
    // @end
    // @end
    // @endif
