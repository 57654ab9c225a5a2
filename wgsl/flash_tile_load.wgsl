// Q^T buffer, loads and stores of the register-tiled kernels (see wgsl/flash_tile.wgsl),
// included by `// @include flash_tile_load` after the kernel's own overrides (DP4, KV4).

// @if PACKED_QT
var<workgroup> qt8: array<vec4<u32>, D * RG>;
// @else
var<workgroup> qt: array<Qt4, D * BR4>;
// @endif

/** Position of K column `c` of chunk row `j` inside the row (see SWIZZLE_K). */
fn kcol(j: u32, c: u32) -> u32 {
  if (SWIZZLE_K != 0u) {
    return c ^ (j & (D4 - 1u));
  }
  return c;
}

/** vec4 `e` of a K chunk (row e / D4, column e % D4); zero past the chunk. */
fn fetch_k(c: Chunk, e: u32, head_off: u32) -> Store4 {
  let j = e / D4;
  var x = Store4();
  if (j < c.kc) {
    x = k[params.base_k + token_of(c.c0 + j) * params.s_t + head_off + e % D4];
  }
  return x;
}

/** vec4 `e` of a V chunk (row e / DP4, column e % DP4); zero past the chunk and head dim. */
fn fetch_v(c: Chunk, e: u32, head_off: u32) -> Store4 {
  let j = e / DP4;
  let col = e % DP4;
  var x = Store4();
  if (j < c.kc && col < D4) {
    x = v[params.base_v + token_of(c.c0 + j) * params.s_t + head_off + col];
  }
  return x;
}

/**
 * fetch_k with the row's token looked up beforehand (`tok`, see kt_I): sparse pipelines only.
 * Dense ones keep fetch_k: the same loads with the token computed outside the branch ran 1-3%
 * slower on NVIDIA (bench/RESULTS.md, round 30).
 */
fn fetch_k_at(c: Chunk, e: u32, head_off: u32, tok: u32) -> Store4 {
  var x = Store4();
  if (e / D4 < c.kc) {
    x = k[params.base_k + tok * params.s_t + head_off + e % D4];
  }
  return x;
}

/** fetch_v with the row's token looked up beforehand (`tok`, see kt_I). */
fn fetch_v_at(c: Chunk, e: u32, head_off: u32, tok: u32) -> Store4 {
  let col = e % DP4;
  var x = Store4();
  if (e / DP4 < c.kc && col < D4) {
    x = v[params.base_v + tok * params.s_t + head_off + col];
  }
  return x;
}

/**
 * Q row `r` of the item at column `col`, scaled to the log2 domain (unscaled with F16_QT: f16 Q^T
 * then holds the inputs exactly and S is scaled instead); zero past `rows`.
 */
fn q_row(r: u32, col: u32, rows: u32, row_start: u32, head_off: u32) -> vec4<f32> {
  var x = vec4<f32>(0.0);
  if (r < rows) {
    // @if F16_QT
    x = load4(q[params.base_q + token_of(row_start + r) * params.s_t + head_off + col]);
    // @else
    x = load4(q[params.base_q + token_of(row_start + r) * params.s_t + head_off + col]) *
      params.scale_log2;
    // @endif
  }
  return x;
}

/** O row `r` (dims 4*col..) scaled by `inv` to its raster position; rows/dims past the end skipped. */
fn store_row(r: u32, col: u32, o: vec4<f32>, inv: f32, rows: u32, row_start: u32, head_off: u32) {
  if (r < rows && col < D4) {
    out[params.base_o + token_of(row_start + r) * params.s_t + head_off + col] = store4(o * inv);
  }
}
