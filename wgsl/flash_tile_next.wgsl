    // Step of the chunk loop of the register-tiled kernels (see wgsl/flash_tile.wgsl), included
    // by `// @include flash_tile_next` before P V: the next chunk `nxt`, its K rows' tokens
    // (sparse pipelines) and, with PREFETCH_K, its K loads, in flight during P V.
    let nxt = next_chunk(cur, count, list_base);
    // @if DENSE
    // @else
    // @unroll I KPT
    kt_I = chunk_token(nxt, (lid + NT * I) / D4);
    // @end
    // @endif
    if (PREFETCH_K != 0u) {
      // @unroll I KPT
      // @if DENSE
      kp_I = fetch_k(nxt, lid + NT * I, head_off);
      // @else
      kp_I = fetch_k_at(nxt, lid + NT * I, head_off, kt_I);
      // @endif
      // @end
    }
