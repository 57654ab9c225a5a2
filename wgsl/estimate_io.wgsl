// Params, shared bindings and sample-table access of the sampled estimators
// (wgsl/estimate_sampled.wgsl, wgsl/estimate_tiled.wgsl), included by `// @include estimate_io`
// after `// @include storage`. Each kernel declares its own bindings from 7 on.

/** Mirrored by SAMPLED_PARAMS in src/webgpu/mask.ts. */
struct Params {
  nbh: u32,
  heads_per_row: u32,
  g: u32,
  tokens: u32,
  s_b: u32,
  s_t: u32,
  s_h: u32,
  base_q: u32,
  base_k: u32,
  /** Stride of the sample table: samples + 1. */
  stride: u32,
  /** Bit 0: mix with the draft map ("hybrid"); bit 1: density per key token (budget "tokens"). */
  hybrid: u32,
  scale: f32,
  /** First pair of the group, relative to the piece. */
  pair0: u32,
  // wgsl/estimate_tiled.wgsl only (estimate_sampled ignores them):
  /** Row blocks per pair. */
  blocks: u32,
  /** Splits of pass A (key ranges); `stat` holds this many (m, l) per row. */
  splits_a: u32,
  /** Raster keys per pass-A split (a multiple of BC). */
  span_a: u32,
  /** Splits of pass B (tile ranges). */
  splits_b: u32,
  /** Tiles per pass-B split. */
  span_b: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<Store4>;
@group(0) @binding(2) var<storage, read> k: array<Store4>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec2<u32>>;
/** Per tile: n_i, then the window-order positions of its samples (`stride` u32 per tile). */
@group(0) @binding(5) var<storage, read> samples: array<u32>;
/** Per tile: (len_i / (maxLen * n_i), len_i / maxLen). */
@group(0) @binding(6) var<storage, read> coef: array<vec2<f32>>;

/** Samples of tile `i` (0 past the last tile). */
fn count_of(i: u32) -> u32 {
  if (i >= params.g) {
    return 0u;
  }
  return samples[i * params.stride];
}
