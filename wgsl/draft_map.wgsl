// Draft map: P[bh][i][j] = softmax_j(dot(Qd_i, Kd_j) * scale), row-wise over the g video tiles.
// Same operation order as the WebAssembly backend: a sequential f32 dot over d, times scale;
// m = max_j s; e = exp(s - m); Z = sequential sum over j = 0..g-1; P = e / Z.
// A workgroup takes R consecutive rows of one (batch, head) and sweeps j with its WG threads;
// Kd_j is loaded once per R rows. P doubles as scratch for s and e.

/** Mirrored by MAP_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  nbh: u32,
  g: u32,
  row_blocks: u32,
  scale: f32,
}

/** Rows per workgroup (sizes the per-thread accumulators). */
const R: u32 = 8u;
const NEG: f32 = -3.0e38;

override D: u32 = 128u;
override WG: u32 = 128u;
override D4: u32 = D / 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qd: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kd: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> p: array<f32>;

var<workgroup> q_rows: array<vec4<f32>, R * D4>;
var<workgroup> red: array<f32, R * WG>;
var<workgroup> row_stat: array<f32, R>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  if (wg >= params.nbh * params.row_blocks) {
    return;
  }
  let g = params.g;
  let bh = wg / params.row_blocks;
  let i0 = (wg % params.row_blocks) * R;
  let rows = min(R, g - i0);
  for (var idx = lid; idx < R * D4; idx += WG) {
    let r = idx / D4;
    var x = vec4<f32>(0.0);
    if (r < rows) {
      x = qd[(bh * g + i0 + r) * D4 + idx % D4];
    }
    q_rows[idx] = x;
  }
  workgroupBarrier();

  let p0 = (bh * g + i0) * g;
  var mx = array<f32, R>(NEG, NEG, NEG, NEG, NEG, NEG, NEG, NEG);
  for (var j = lid; j < g; j += WG) {
    // Explicit initialiser: naga does not re-zero an uninitialised `var` declared in a loop.
    var s = array<f32, R>();
    let kb = (bh * g + j) * D4;
    for (var c = 0u; c < D4; c++) {
      let kv = kd[kb + c];
      for (var r = 0u; r < R; r++) {
        let qv = q_rows[r * D4 + c];
        s[r] = s[r] + qv.x * kv.x;
        s[r] = s[r] + qv.y * kv.y;
        s[r] = s[r] + qv.z * kv.z;
        s[r] = s[r] + qv.w * kv.w;
      }
    }
    for (var r = 0u; r < R; r++) {
      if (r < rows) {
        let sr = s[r] * params.scale;
        p[p0 + r * g + j] = sr;
        mx[r] = max(mx[r], sr);
      }
    }
  }
  for (var r = 0u; r < R; r++) {
    red[r * WG + lid] = mx[r];
  }
  workgroupBarrier();
  if (lid < R) {
    var m = NEG;
    for (var t = 0u; t < WG; t++) {
      m = max(m, red[lid * WG + t]);
    }
    row_stat[lid] = m;
  }
  workgroupBarrier();
  for (var r = 0u; r < rows; r++) {
    let m = row_stat[r];
    for (var j = lid; j < g; j += WG) {
      p[p0 + r * g + j] = exp(p[p0 + r * g + j] - m);
    }
  }
  storageBarrier();
  workgroupBarrier();
  if (lid < rows) {
    var z = 0.0;
    for (var j = 0u; j < g; j++) {
      z += p[p0 + lid * g + j];
    }
    row_stat[lid] = z;
  }
  workgroupBarrier();
  for (var r = 0u; r < rows; r++) {
    let z = row_stat[r];
    for (var j = lid; j < g; j += WG) {
      p[p0 + r * g + j] = p[p0 + r * g + j] / z;
    }
  }
}
