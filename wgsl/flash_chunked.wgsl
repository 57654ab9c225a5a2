// Flash attention over work items, dense or block-sparse, with Q and K staged in head-dim
// chunks: the variant for small workgroup memory (WebGPU's default 16 KiB) and head dims above
// 128; wgsl/flash_subgroup.wgsl and wgsl/flash_tiled.wgsl are the main, register-tiled kernels.
// Keys come chunk by chunk (BC keys) from the block-list iterator `next_chunk` of
// wgsl/flash_io.wgsl: in dense mode every query visits the single key run [0, tokens); in
// sparse mode a query tile visits the key tiles of its block list, consecutive tiles merged.
//
// Workgroup = one work item (tile, rowStart, rows) x one (batch, head) of the piece; rowStart is
// an absolute window-order position, `tile` selects the block list (unused in dense mode).
// Threads form an RG x CG grid; thread (rg, cg) owns
//   - scores   S[rg + RG*m][cg + CG*n]        m, n < 4  (vec4 registers s0..s3, one per row)
//   - output   O[rg + RG*m][4*(cg + CG*t)..]  m < 4, t < TD4 (TD4 vec4 registers o0..o3 per row)
// so BR = 4*RG query rows, BC = 4*CG keys per chunk, DP = 4*CG*TD4 >= headDim (padded dims are
// zero-filled and never stored). Key columns are strided by CG so that staged K rows read by
// neighbouring threads sit in different banks (row stride DK/4 + 1 vec4).
//
// Per chunk: S = Q K^T over d-chunks of DK (Q stays resident when headDim <= DK), row max via
// `red`, online softmax in the log2 domain (scale*log2(e) folded into Q on load), P to `ps`,
// then O += P V with V staged VK keys at a time in the K region. f32 accumulators and statistics
// whatever the storage type; a row with no key (l = 0) writes zeros.
//
// Tensors are read through strides in vec4 units: element (b, t, h, 4*c) of the piece is at
// base + b*s_b + t*s_t + h*s_h + c, where (b, h) = (bh / heads_per_row, bh % heads_per_row).
// Query/key window-order position p maps to raster token order[p] (identity in dense mode).

// @include storage
// @include flash_io

/** Output vec4 per row and thread: the one register-shape placeholder (set by the host). */
const TD4: u32 = 2u;
/** Rows and keys per thread (fixed micro tile: the named registers s0..s3, o0..o3). */
const TM: u32 = 4u;
const TN: u32 = 4u;
const INVALID: u32 = 0xffffffffu;
/** Masked score: finite so that exp2(NEG - m) = 0 and NEG - NEG never makes NaN. */
const NEG: f32 = -3.0e38;

override RG: u32 = 16u;
override CG: u32 = 16u;
override D: u32 = 128u;
override DK: u32 = 32u;
override VK: u32 = 32u;
override NT: u32 = RG * CG;
override BR: u32 = TM * RG;
override BC: u32 = TN * CG;
override D4: u32 = D / 4u;
override DK4: u32 = DK / 4u;
override DP4: u32 = CG * TD4;
override ND: u32 = (D4 + DK4 - 1u) / DK4;
override KSTR4: u32 = DK4 + 1u;
override KOFF: u32 = BR * KSTR4;
override STAGE4: u32 = KOFF + max(BC * KSTR4, VK * DP4);

/** [0, KOFF): Q chunk (BR rows); [KOFF, STAGE4): K chunk (BC rows) or V sub-chunk (VK rows). */
var<workgroup> stage: array<vec4<f32>, STAGE4>;
/** P tile, BR x BC, row-major. */
var<workgroup> ps: array<f32, BR * BC>;
/** Per-row partials (max, then l), BR x CG. */
var<workgroup> red: array<f32, BR * CG>;
/** vec4 offset of each query row / key of the chunk, INVALID when out of range. */
var<workgroup> row_off: array<u32, BR>;
var<workgroup> key_off: array<u32, BC>;

fn stage_q(dc: u32, lid: u32) {
  for (var idx = lid; idx < BR * DK4; idx += NT) {
    let r = idx / DK4;
    let c = idx % DK4;
    let d4 = dc * DK4 + c;
    var x = vec4<f32>(0.0);
    let off = row_off[r];
    if (off != INVALID && d4 < D4) {
      x = load4(q[params.base_q + off + d4]) * params.scale_log2;
    }
    stage[r * KSTR4 + c] = x;
  }
}

fn stage_k(dc: u32, lid: u32) {
  for (var idx = lid; idx < BC * DK4; idx += NT) {
    let j = idx / DK4;
    let c = idx % DK4;
    let d4 = dc * DK4 + c;
    var x = vec4<f32>(0.0);
    let off = key_off[j];
    if (off != INVALID && d4 < D4) {
      x = load4(k[params.base_k + off + d4]);
    }
    stage[KOFF + j * KSTR4 + c] = x;
  }
}

fn stage_v(v0: u32, lid: u32) {
  for (var idx = lid; idx < VK * DP4; idx += NT) {
    let j = idx / DP4;
    let c = idx % DP4;
    var x = vec4<f32>(0.0);
    if (v0 + j < BC) {
      let off = key_off[v0 + j];
      if (off != INVALID && c < D4) {
        x = load4(v[params.base_v + off + c]);
      }
    }
    stage[KOFF + idx] = x;
  }
}

fn max4(x: vec4<f32>) -> f32 {
  return max(max(x.x, x.y), max(x.z, x.w));
}

/**
 * Online-softmax step of one row: new max from the CG partials in `red`, rescale of l and O by
 * alpha = exp2(m_old - m_new), p = exp2(s - m_new) to `ps` (keys cg + CG*n).
 */
fn softmax_row(
  s: vec4<f32>,
  row: u32,
  cg: u32,
  stat: ptr<function, vec2<f32>>,
  o: ptr<function, array<vec4<f32>, TD4>>,
) {
  var mx = NEG;
  for (var c = 0u; c < CG; c++) {
    mx = max(mx, red[row * CG + c]);
  }
  let m_old = (*stat).x;
  let m_new = max(m_old, mx);
  let alpha = exp2(m_old - m_new);
  let p = exp2(s - vec4<f32>(m_new));
  *stat = vec2<f32>(m_new, (*stat).y * alpha + ((p.x + p.y) + (p.z + p.w)));
  for (var t = 0u; t < TD4; t++) {
    (*o)[t] *= alpha;
  }
  ps[row * BC + cg] = p.x;
  ps[row * BC + cg + CG] = p.y;
  ps[row * BC + cg + 2u * CG] = p.z;
  ps[row * BC + cg + 3u * CG] = p.w;
}

/** O / l of one row (l = sum of the CG partials in `red`) to its raster position. */
fn store_row(row: u32, cg: u32, o: ptr<function, array<vec4<f32>, TD4>>) {
  var l = 0.0;
  for (var c = 0u; c < CG; c++) {
    l += red[row * CG + c];
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  let off = row_off[row];
  if (off != INVALID) {
    for (var t = 0u; t < TD4; t++) {
      let c = cg + CG * t;
      if (c < D4) {
        out[params.base_o + off + c] = store4((*o)[t] * inv);
      }
    }
  }
}

@compute @workgroup_size(NT)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  // @include flash_item

  for (var r = lid; r < BR; r += NT) {
    var off = INVALID;
    if (r < rows) {
      off = token_of(row_start + r) * params.s_t + head_off;
    }
    row_off[r] = off;
  }
  workgroupBarrier();
  if (ND == 1u) {
    stage_q(0u, lid);
  }

  // Row statistics (m, l) and output tiles: named per row so that they stay in registers.
  var st0 = vec2<f32>(NEG, 0.0);
  var st1 = vec2<f32>(NEG, 0.0);
  var st2 = vec2<f32>(NEG, 0.0);
  var st3 = vec2<f32>(NEG, 0.0);
  var o0 = array<vec4<f32>, TD4>();
  var o1 = array<vec4<f32>, TD4>();
  var o2 = array<vec4<f32>, TD4>();
  var o3 = array<vec4<f32>, TD4>();
  let r0 = rg;
  let r1 = rg + RG;
  let r2 = rg + 2u * RG;
  let r3 = rg + 3u * RG;
  let keys = vec4<u32>(cg, cg + CG, cg + 2u * CG, cg + 3u * CG);

  var count = 1u;
  var list_base = 0u;
  if (!dense_mode()) {
    let row = bh * params.tiles + tile;
    count = counts[row];
    list_base = row * params.tiles;
  }
  var cur = next_chunk(Chunk(0u, 0u, 0u, 0u), count, list_base);
  while (cur.kc > 0u) {
    let c0 = cur.c0;
    let kc = cur.kc;
    workgroupBarrier(); // previous chunk done with stage, ps, key_off
    for (var j = lid; j < BC; j += NT) {
      var off = INVALID;
      if (j < kc) {
        off = token_of(c0 + j) * params.s_t + head_off;
      }
      key_off[j] = off;
    }
    workgroupBarrier();

    // S = Q K^T (log2 domain), one vec4 of keys per row.
    // Explicit initialisers in loops: naga does not re-zero an uninitialised `var` there.
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var dc = 0u; dc < ND; dc++) {
      if (dc > 0u) {
        workgroupBarrier();
      }
      if (ND > 1u) {
        stage_q(dc, lid);
      }
      stage_k(dc, lid);
      workgroupBarrier();
      for (var c = 0u; c < DK4; c++) {
        let k0 = stage[KOFF + keys.x * KSTR4 + c];
        let k1 = stage[KOFF + keys.y * KSTR4 + c];
        let k2 = stage[KOFF + keys.z * KSTR4 + c];
        let k3 = stage[KOFF + keys.w * KSTR4 + c];
        let q0 = stage[r0 * KSTR4 + c];
        let q1 = stage[r1 * KSTR4 + c];
        let q2 = stage[r2 * KSTR4 + c];
        let q3 = stage[r3 * KSTR4 + c];
        s0 += vec4<f32>(dot(q0, k0), dot(q0, k1), dot(q0, k2), dot(q0, k3));
        s1 += vec4<f32>(dot(q1, k0), dot(q1, k1), dot(q1, k2), dot(q1, k3));
        s2 += vec4<f32>(dot(q2, k0), dot(q2, k1), dot(q2, k2), dot(q2, k3));
        s3 += vec4<f32>(dot(q3, k0), dot(q3, k1), dot(q3, k2), dot(q3, k3));
      }
    }

    // Online softmax: chunk row max across the CG threads of a row, then rescale.
    let masked = keys >= vec4<u32>(kc);
    s0 = select(s0, vec4<f32>(NEG), masked);
    s1 = select(s1, vec4<f32>(NEG), masked);
    s2 = select(s2, vec4<f32>(NEG), masked);
    s3 = select(s3, vec4<f32>(NEG), masked);
    red[r0 * CG + cg] = max4(s0);
    red[r1 * CG + cg] = max4(s1);
    red[r2 * CG + cg] = max4(s2);
    red[r3 * CG + cg] = max4(s3);
    workgroupBarrier();
    softmax_row(s0, r0, cg, &st0, &o0);
    softmax_row(s1, r1, cg, &st1, &o1);
    softmax_row(s2, r2, cg, &st2, &o2);
    softmax_row(s3, r3, cg, &st3, &o3);

    // O += P V, V staged VK keys at a time (keys >= kc have p = 0 and zero V).
    for (var v0 = 0u; v0 < kc; v0 += VK) {
      workgroupBarrier(); // ps complete; previous V sub-chunk consumed
      stage_v(v0, lid);
      workgroupBarrier();
      for (var j = 0u; j < VK; j++) {
        let p0 = vec4<f32>(ps[r0 * BC + v0 + j]);
        let p1 = vec4<f32>(ps[r1 * BC + v0 + j]);
        let p2 = vec4<f32>(ps[r2 * BC + v0 + j]);
        let p3 = vec4<f32>(ps[r3 * BC + v0 + j]);
        for (var t = 0u; t < TD4; t++) {
          let vv = stage[KOFF + j * DP4 + cg + CG * t];
          o0[t] = fma(p0, vv, o0[t]);
          o1[t] = fma(p1, vv, o1[t]);
          o2[t] = fma(p2, vv, o2[t]);
          o3[t] = fma(p3, vv, o3[t]);
        }
      }
    }
    cur = next_chunk(cur, count, list_base);
  }

  // l = sum of the CG per-thread partials; O / l to the raster position of each row.
  workgroupBarrier();
  red[r0 * CG + cg] = st0.y;
  red[r1 * CG + cg] = st1.y;
  red[r2 * CG + cg] = st2.y;
  red[r3 * CG + cg] = st3.y;
  workgroupBarrier();
  store_row(r0, cg, &o0);
  store_row(r1, cg, &o1);
  store_row(r2, cg, &o2);
  store_row(r3, cg, &o3);
}
