// Window means: Xd[bh][i][:] = mean of X over the tokens of video tile i, read through `order`.
// Same operation order as the WebAssembly backend: a sequential f32 sum over the tile's tokens in
// window order, then `sum * inv_len[i]`, where inv_len[i] = f32(1 / len) is computed on the host
// (correctly rounded, like the f32 division of WebAssembly; WGSL's f32 division is not).
// One invocation per (bh, tile, vec4 of head dims) of a group of `nbh` pairs: it reads pair
// pair0 + bh of the piece in x and writes row bh of `pooled` (scratch sized for the group).

// @include storage

/** Mirrored by POOL_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  nbh: u32,
  heads_per_row: u32,
  g: u32,
  s_b: u32,
  s_t: u32,
  s_h: u32,
  base: u32,
  /** First pair of the group, relative to the piece. */
  pair0: u32,
}

override D: u32 = 128u;
override WG: u32 = 64u;
override D4: u32 = D / 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Store4>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read> tiles: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> inv_len: array<f32>;
@group(0) @binding(5) var<storage, read_write> pooled: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * WG + lid;
  if (id >= params.nbh * params.g * D4) {
    return;
  }
  let c = id % D4;
  let i = (id / D4) % params.g;
  let bh = id / (D4 * params.g);
  let pair = params.pair0 + bh;
  let head_off = (pair / params.heads_per_row) * params.s_b + (pair % params.heads_per_row) * params.s_h;
  let t = tiles[i];
  var sum = vec4<f32>(0.0);
  for (var r = 0u; r < t.y; r++) {
    sum += load4(x[params.base + order[t.x + r] * params.s_t + head_off + c]);
  }
  pooled[id] = sum * inv_len[i];
}
