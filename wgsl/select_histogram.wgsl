// Radix select, histogram pass: counts the 8-bit digit at `shift` of the f32 bit patterns of P
// among the entries whose higher digits equal the prefix chosen by the previous passes. P >= 0,
// so the bit patterns order like the values. Passes run with shift = 24, 16, 8, 0; each is
// followed by select_pick. A workgroup counts CHUNK entries of one (batch, head) into a
// workgroup histogram, then adds its non-zero bins to the global one.

/** Mirrored by HIST_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  nbh: u32,
  n: u32,
  chunks: u32,
  shift: u32,
}

const WG: u32 = 256u;
override CHUNK: u32 = 4096u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<u32>;
/** Per (batch, head): (prefix, remaining rank k), written by select_pick. */
@group(0) @binding(2) var<storage, read> state: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>;

var<workgroup> local_hist: array<atomic<u32>, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  if (wg >= params.nbh * params.chunks) {
    return;
  }
  let bh = wg / params.chunks;
  let e0 = (wg % params.chunks) * CHUNK;
  let e1 = min(e0 + CHUNK, params.n);
  let first = params.shift == 24u;
  // The first pass has no prefix; `<< 32` would wrap to `<< 0`, hence the select.
  let high = select(0xffffffffu << (params.shift + 8u), 0u, first);
  let prefix = select(state[bh].x, 0u, first);
  atomicStore(&local_hist[lid], 0u);
  workgroupBarrier();
  let base = bh * params.n;
  for (var e = e0 + lid; e < e1; e += WG) {
    let bits = p[base + e];
    if ((bits & high) == prefix) {
      atomicAdd(&local_hist[(bits >> params.shift) & 0xffu], 1u);
    }
  }
  workgroupBarrier();
  let c = atomicLoad(&local_hist[lid]);
  if (c != 0u) {
    atomicAdd(&hist[bh * WG + lid], c);
  }
}
