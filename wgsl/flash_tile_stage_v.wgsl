    // Step of the chunk loop of the register-tiled kernels (see wgsl/flash_tile.wgsl), included
    // by `// @include flash_tile_stage_v` once S no longer reads `kv`: V of chunk `cur` (loaded
    // now unless EARLY_V loaded it before S) staged into `kv`.
    if (EARLY_V == 0u) {
      // @unroll I VPT
      // @if V_TOKENS_FROM_K
      vp_I = fetch_v_at(cur, lid + NT * I, head_off, kt_I);
      // @else
      vp_I = fetch_v(cur, lid + NT * I, head_off);
      // @endif
      // @end
    }
    // @unroll I VPT
    {
      let e = lid + NT * I;
      if (e < BC * DP4) {
        kv[e] = kv_in(vp_I);
      }
    }
    // @end
