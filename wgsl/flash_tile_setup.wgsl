  // Step of `main` of the register-tiled kernels (see wgsl/flash_tile.wgsl), included by
  // `// @include flash_tile_setup` after flash_item: Q^T of the tile into workgroup memory, the
  // block list, the register tiles and the first chunk (its K loaded ahead with PREFETCH_K).
  // @if PACKED_QT
  // Q^T of the tile, once, 8 rows per vec4<u32>: unit e = rows 8*(e % RG).. at column e / RG.
  // @unroll I QPT
  {
    let e = lid + NT * I;
    if (e < RG * D4) {
      let r8 = 8u * (e % RG);
      let col = e / RG;
      let x0 = q_row(r8, col, rows, row_start, head_off);
      let x1 = q_row(r8 + 1u, col, rows, row_start, head_off);
      let x2 = q_row(r8 + 2u, col, rows, row_start, head_off);
      let x3 = q_row(r8 + 3u, col, rows, row_start, head_off);
      let x4 = q_row(r8 + 4u, col, rows, row_start, head_off);
      let x5 = q_row(r8 + 5u, col, rows, row_start, head_off);
      let x6 = q_row(r8 + 6u, col, rows, row_start, head_off);
      let x7 = q_row(r8 + 7u, col, rows, row_start, head_off);
      let at = 4u * col * RG + e % RG;
      // @unroll J 4
      qt8[at + J * RG] = vec4<u32>(
        pack2x16float(vec2<f32>(x0[J], x1[J])),
        pack2x16float(vec2<f32>(x2[J], x3[J])),
        pack2x16float(vec2<f32>(x4[J], x5[J])),
        pack2x16float(vec2<f32>(x6[J], x7[J])),
      );
      // @end
    }
  }
  // @end
  // @else
  // Q^T of the tile, once: vec4 e of the tile = row quad e % BR4 at column e / BR4.
  // @unroll I QPT
  {
    let e = lid + NT * I;
    if (e < BR4 * D4) {
      let rq = e % BR4;
      let col = e / BR4;
      let x0 = q_row(4u * rq, col, rows, row_start, head_off);
      let x1 = q_row(4u * rq + 1u, col, rows, row_start, head_off);
      let x2 = q_row(4u * rq + 2u, col, rows, row_start, head_off);
      let x3 = q_row(4u * rq + 3u, col, rows, row_start, head_off);
      let at = 4u * col * BR4 + rq;
      qt[at] = Qt4(vec4<f32>(x0.x, x1.x, x2.x, x3.x));
      qt[at + BR4] = Qt4(vec4<f32>(x0.y, x1.y, x2.y, x3.y));
      qt[at + 2u * BR4] = Qt4(vec4<f32>(x0.z, x1.z, x2.z, x3.z));
      qt[at + 3u * BR4] = Qt4(vec4<f32>(x0.w, x1.w, x2.w, x3.w));
    }
  }
  // @end
  // @endif

  var count = 1u;
  var list_base = 0u;
  if (!dense_mode()) {
    let row = bh * params.tiles + tile;
    count = counts[row];
    list_base = row * params.tiles;
  }

  // Row quads, keys, statistics (m, l per row of a quad) and the output tile.
  // @unroll R TM4
  let rq_R = rg * TM4 + R;
  var m_R = vec4<f32>(NEG);
  var l_R = vec4<f32>(0.0);
  // @unroll C 4
  // @unroll T TD4
  var o_R_C_T = vec4<f32>(0.0);
  // @end
  // @end
  // @end
  // @unroll N TN
  let key_N = cg + CG * N;
  // @end

  var cur = next_chunk(Chunk(0u, 0u, 0u, 0u), count, list_base);
  // Sparse pipelines: the tokens of the K rows this thread stages (and of its V rows with
  // V_TOKENS_FROM_K), looked up as soon as the next chunk is known (before P V), so that the K
  // loads after B1 wait for one global load, not two. Dense pipelines (identity order,
  // V_TOKENS_FROM_K = 0) keep no such registers.
  // @if DENSE
  // @else
  // @unroll I KPT
  var kt_I = chunk_token(cur, (lid + NT * I) / D4);
  // @end
  // @endif
  // @unroll I KPT
  var kp_I = Store4();
  // @end
  // @unroll I VPT
  var vp_I = Store4();
  // @end
  if (PREFETCH_K != 0u) {
    // @unroll I KPT
    // @if DENSE
    kp_I = fetch_k(cur, lid + NT * I, head_off);
    // @else
    kp_I = fetch_k_at(cur, lid + NT * I, head_off, kt_I);
    // @endif
    // @end
  }
