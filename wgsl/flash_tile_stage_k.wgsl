    // Step of the chunk loop of the register-tiled kernels (see wgsl/flash_tile.wgsl), included
    // by `// @include flash_tile_stage_k` first in the loop: K of chunk `cur` staged into `kv`.
    workgroupBarrier(); // B1: the previous chunk is done with the buffers
    if (PREFETCH_K == 0u) {
      // @unroll I KPT
      // @if DENSE
      kp_I = fetch_k(cur, lid + NT * I, head_off);
      // @else
      kp_I = fetch_k_at(cur, lid + NT * I, head_off, kt_I);
      // @endif
      // @end
    }
    // @unroll I KPT
    {
      let e = lid + NT * I;
      if (e < BC * D4) {
        kv[(e / D4) * KSTR4 + kcol(e / D4, e % D4)] = kv_in(kp_I);
      }
    }
    // @end
