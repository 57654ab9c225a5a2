// Flash attention over work items, dense or block-sparse, register-tiled: the main kernel for
// head dims up to 128 (wgsl/flash_chunked.wgsl serves small workgroup memory and larger heads).
// One kernel for both modes, driven by a chunk iterator: in dense mode every query visits the
// single key run [0, tokens); in sparse mode a query tile visits the key tiles of its block
// list, consecutive tiles (tile j+1 starting where tile j ends) merged into one run. Each run is
// cut into chunks of BC keys.
//
// Workgroup = one work item (tile, rowStart, rows) x one (batch, head) of the piece; rowStart is
// an absolute window-order position, `tile` selects the block list (unused in dense mode).
// Threads form an RG x CG grid; thread (rg, cg) owns
//   - query rows 4*rq + c, c < 4, for its row quads rq = rg*TM4 + R, R < TM4 (TM = 4*TM4 rows)
//   - keys cg + CG*N, N < TN, of each chunk (so BC = TN*CG; strided so that neighbouring
//     threads read K rows in different banks)
//   - output dims 4*(cg + CG*T).., T < TD4 (so DP = 4*CG*TD4 >= headDim; padded dims are
//     zero-filled and never stored).
// Every register tile is a set of named vec4 variables (s_R_N: scores of 4 rows x key N;
// o_R_C_T: row 4*rq_R + C, dims T), written once here inside `// @unroll X COUNT` blocks that
// src/webgpu/specialize.ts repeats for X = 0..COUNT-1 (suffix `_X` -> `_i`, token `X` -> `iu`):
// this file is a template, valid WGSL once expanded. Loop-indexed private arrays would leave
// registers; named values stay in them.
//
// Workgroup memory (f32, except where HS / HQ ask for f16, see below):
//   qt  Q^T of the tile, scaled by scale*log2(e): qt[d*BR4 + rq] = rows 4rq..4rq+3 at dim d.
//   kv  the chunk's K rows (stride D4+1 vec4: conflict-free column reads; with KX stride D4 and
//       columns XOR-swizzled by row, as conflict-free), then its V rows (stride DP4) once S is
//       done.
// f16 inputs on a device with shader-f16 may keep kv in f16 (HS: the halves are stored as they
// came, widened to f32 where read) and Q^T too (HQ: Q unscaled, so exactly the inputs, and S
// scaled after the dot products instead), halving the workgroup memory of those tiles; both are
// exact. With HM the S products are f16 too, summed in f16 over UD*4 dims, then into the f32
// scores: faster, but its error grows with the logits (not in the table).
//   pt  P^T of the chunk: pt[j*PSTR4 + rq] = p of rows 4rq..4rq+3 at key j.
//   red per-row partials (max, then l) of the CG threads of a row group.
// Per chunk: S = Q K^T as outer products (per dim: TM4 vec4 of Q^T, TN scalars of K, TM4*TN
// vec4 FMAs), row max via `red`, online softmax in the log2 domain, P^T to `pt`, O += P V (per
// key: TM4 vec4 of P^T, TD4 vec4 of V, TM*TD4 vec4 FMAs); both loops unrolled UD / UJ times
// in the source, so the loads of several steps can be hoisted. Four barriers per chunk. Optionally
// global loads are issued a phase ahead of their use (registers for occupancy): the next
// chunk's K during P V (PF = 1), the chunk's V during S (VE = 1). f32 accumulators and
// statistics; a row with no key (l = 0) writes zeros.
//
// Tensors are read through strides in vec4 units: element (b, t, h, 4*c) of the piece is at
// base + b*s_b + t*s_t + h*s_h + c, where (b, h) = (bh / heads_per_row, bh % heads_per_row).
// Query/key window-order position p maps to raster token order[p] (identity in dense mode).

// @if H16
enable f16;
// @endif

// @include storage
// @include flash_io

// Register-shape placeholders (set by the host, see src/webgpu/variants.ts).
/** Row quads per thread (TM = 4*TM4 query rows). */
const TM4: u32 = 1u;
/** Output vec4 per row and thread. */
const TD4: u32 = 4u;
/** Global vec4 loads per thread: Q tile (QPT), K chunk (KPT), V chunk (VPT). */
const QPT: u32 = 4u;
const KPT: u32 = 16u;
const VPT: u32 = 16u;
/** Keys per thread (BC = TN*CG). */
const TN: u32 = 4u;
/** Source unroll of the S loop over head-dim vec4 (divides D4) and of the P V loop over keys. */
const UD: u32 = 4u;
const UJ: u32 = 4u;
/** 1: load the next chunk's K during P V; 0: right before staging it. */
const PF: u32 = 0u;
/** 1: load the chunk's V before S (in flight during S); 0: right before staging it. */
const VE: u32 = 0u;

/** 1: K/V chunk in f16 workgroup memory (f16 storage only). */
const HS: u32 = 0u;
/** 1: Q^T in f16 workgroup memory. */
const HQ: u32 = 0u;
/** 1: S in f16 arithmetic over UD*4 dims, summed into f32 (needs HS and HQ). */
const HM: u32 = 0u;
/**
 * 1: a row group is one subgroup (CG = the subgroup size, consecutive invocations): row max and
 * l by subgroup reductions, P passed by subgroupShuffle, V in its own buffer `vs` staged with K,
 * two barriers per chunk; no pt, no red.
 */
const SG: u32 = 0u;
/**
 * 1 (with SG): V is staged into `kv` once S is done, over the K rows, instead of into its own
 * buffer with K: one barrier more per chunk, K/V memory halved (tiles for 16 KiB devices).
 */
const SV: u32 = 0u;
/**
 * 1: K rows unpadded in `kv` (stride D4), column c of row j stored at c ^ (j % D4) (D4 a power of
 * two): still conflict-free column reads, one vec4 per key less memory than the padded stride.
 */
const KX: u32 = 0u;
/**
 * 1 (with HQ, TM4 = 2): Q^T packed 8 rows per vec4<u32> (f16 pairs), so that one 16-byte load
 * gives a thread the 8 rows of a dim where HQ's vec4<f16> loads give 4: half the workgroup-memory
 * loads in S. Exact (the values are f16).
 */
const Q8: u32 = 0u;
/**
 * 1 (with SG): in P V the two halves of a subgroup take half the chunk's keys each over
 * DP = 2*CG*TD4 dims, summed by one shuffle at the end: head dim 64 with subgroups of 32 keeps
 * every lane busy (without it, half the lanes would hold padding dims).
 */
const KH: u32 = 0u;
/**
 * The device's subgroup size (with SG; 1 otherwise). CG may be a power-of-two divisor of it: a
 * subgroup then holds SGS / CG row groups ("sub-rows"), reduced over their CG lanes by
 * shuffle-xor butterflies, so a lane can own TN > 1 keys of a 32-key chunk and every Q^T load
 * feeds TN times the FMAs.
 */
const SGS: u32 = 1u;
/** 1: CG < SGS (sub-rows); 0: a row group is a whole subgroup (or no subgroups). */
const SR: u32 = 0u;
/**
 * 1 (with SG and HS): P V in f16 arithmetic: P rounded to f16 (values in [0, 1]), products with
 * the f16 V summed in f16 over runs of UJ keys, each run then added into the f32 O. Half the
 * shuffles, no V conversions, packed f16 FMAs; the f16 sums stay relative to |P V| of a run,
 * which the normalisation by l divides out (unlike f16 S, whose error is exponentiated).
 */
const PH: u32 = 0u;
/** 1: any of HS, HQ, HM (the module enables f16). */
const H16: u32 = 0u;
/**
 * 1: a thread's V rows are its K rows (DP = D, so VPT = KPT): V fetches reuse the K rows'
 * tokens (kt_I) instead of looking them up again.
 */
const VT: u32 = 0u;

// @if HS
alias Kv4 = vec4<f16>;
fn kv_in(x: Store4) -> Kv4 {
  // Exact (the values are f16); naga mistypes bitcast<vec2<f16>>(u32), so no bit copy.
  return vec4<f16>(load4(x));
}
// @else
alias Kv4 = vec4<f32>;
fn kv_in(x: Store4) -> Kv4 {
  return load4(x);
}
// @endif
// @if PH
/** V as P V multiplies it (f16 with PH). */
fn pv_in(x: Kv4) -> vec4<f16> {
  return x;
}
// @else
fn pv_in(x: Kv4) -> vec4<f32> {
  return vec4<f32>(x);
}
// @endif
// @if HQ
alias Qt4 = vec4<f16>;
// @else
alias Qt4 = vec4<f32>;
// @endif

/** Position of K column `c` of chunk row `j` inside the row (see KX). */
fn kcol(j: u32, c: u32) -> u32 {
  if (KX != 0u) {
    return c ^ (j & (D4 - 1u));
  }
  return c;
}

// @if SG
/** Max of `x` over the CG lanes of the caller's row group (a subgroup, or a part of one). */
fn row_max(x: vec4<f32>) -> vec4<f32> {
  // @if SR
  var m = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    m = max(m, subgroupShuffleXor(m, o));
  }
  return m;
  // @else
  return subgroupMax(x);
  // @endif
}

/** Sum of `x` over the CG lanes of the caller's row group. */
fn row_sum(x: vec4<f32>) -> vec4<f32> {
  // @if SR
  var s = x;
  for (var o = CG >> 1u; o > 0u; o >>= 1u) {
    s += subgroupShuffleXor(s, o);
  }
  return s;
  // @else
  return subgroupAdd(x);
  // @endif
}
// @endif

/** Masked score: finite so that exp2(NEG - m) = 0 and NEG - NEG never makes NaN. */
const NEG: f32 = -3.0e38;

override RG: u32 = 8u;
override CG: u32 = 8u;
override D: u32 = 128u;
override NT: u32 = RG * CG;
override BR4: u32 = TM4 * RG;
override BC: u32 = TN * CG;
override D4: u32 = D / 4u;
override DP4: u32 = (CG >> KH) * TD4;
override KSTR4: u32 = D4 + 1u - KX;
override PSTR4: u32 = BR4 + 1u;
override KV4: u32 = max(BC * KSTR4, BC * DP4);

// @if Q8
var<workgroup> qt8: array<vec4<u32>, D * RG>;
// @else
var<workgroup> qt: array<Qt4, D * BR4>;
// @endif
var<workgroup> kv: array<Kv4, KV4>;
// @if SG
// @if SV
// @else
var<workgroup> vs: array<Kv4, BC * DP4>;
// @endif
// @else
var<workgroup> pt: array<vec4<f32>, BC * PSTR4>;
var<workgroup> red: array<vec4<f32>, BR4 * CG>;
// @endif

/** A chunk of keys [c0, c0 + kc) of the run ending at run_e; li = next block-list index. */
struct Chunk {
  c0: u32,
  kc: u32,
  run_e: u32,
  li: u32,
}

/** The chunk after `c`: the next BC keys of its run, else the next run; kc = 0 when done. */
fn next_chunk(c: Chunk, count: u32, list_base: u32) -> Chunk {
  var n = c;
  n.c0 = c.c0 + c.kc;
  if (n.c0 >= n.run_e) {
    if (n.li >= count) {
      n.kc = 0u;
      return n;
    }
    if (dense_mode()) {
      n.c0 = 0u;
      n.run_e = params.tokens;
      n.li = count;
    } else {
      let t0 = tile_of(lists[list_base + n.li]);
      n.c0 = t0.x;
      n.run_e = t0.x + t0.y;
      n.li++;
      while (n.li < count) {
        let tn = tile_of(lists[list_base + n.li]);
        if (tn.x != n.run_e) {
          break;
        }
        n.run_e += tn.y;
        n.li++;
      }
    }
  }
  n.kc = min(BC, n.run_e - n.c0);
  return n;
}

/** Raster token of row `j` of chunk `c` (0 past the chunk). */
fn chunk_token(c: Chunk, j: u32) -> u32 {
  var t = 0u;
  if (j < c.kc) {
    t = token_of(c.c0 + j);
  }
  return t;
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
 * Q row `r` of the item at column `col`, scaled to the log2 domain (unscaled with HQ: f16 Q^T
 * then holds the inputs exactly and S is scaled instead); zero past `rows`.
 */
fn q_row(r: u32, col: u32, rows: u32, row_start: u32, head_off: u32) -> vec4<f32> {
  var x = vec4<f32>(0.0);
  if (r < rows) {
    // @if HQ
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

@compute @workgroup_size(NT)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  // Linearised 2-D dispatch (see Kernel.dispatch): uniform, so returning is safe.
  let wg = wid.x + wid.y * nwg.x;
  if (wg >= params.items * params.nbh) {
    return;
  }
  let it = work_item(wg);
  let bh = it.bh;
  let tile = it.tile;
  let row_start = it.row_start;
  let rows = it.rows;
  let head_off = it.head_off;

  let cg = lid % CG;
  let rg = lid / CG;
  // P V's dims and keys of the lane: dims dcol + (CG >> KH) * T; with KH, keys kh.. of the chunk.
  let dcol = cg % (CG >> KH);
  let kh = cg - dcol;
  // Subgroup lane of the row group's first lane (0 unless sub-rows).
  // @if SR
  let sbase = (lid % SGS) - cg;
  // @else
  let sbase = 0u;
  // @endif

  // @if Q8
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
  // Sparse pipelines: the tokens of the K rows this thread stages (and of its V rows with VT),
  // looked up as soon as the next chunk is known (before P V), so that the K loads after B1 wait
  // for one global load, not two. Dense pipelines (identity order, VT = 0) keep no such registers.
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
  if (PF != 0u) {
    // @unroll I KPT
    // @if DENSE
    kp_I = fetch_k(cur, lid + NT * I, head_off);
    // @else
    kp_I = fetch_k_at(cur, lid + NT * I, head_off, kt_I);
    // @endif
    // @end
  }

  while (cur.kc > 0u) {
    workgroupBarrier(); // B1: the previous chunk is done with kv, pt and red
    if (PF == 0u) {
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
    // @if SG
    // @if SV
    if (VE != 0u) {
      // @unroll I VPT
      // @if VT
      vp_I = fetch_v_at(cur, lid + NT * I, head_off, kt_I);
      // @else
      vp_I = fetch_v(cur, lid + NT * I, head_off);
      // @endif
      // @end
    }
    // @else
    // @unroll I VPT
    {
      let e = lid + NT * I;
      if (e < BC * DP4) {
        // @if VT
        vs[e] = kv_in(fetch_v_at(cur, e, head_off, kt_I));
        // @else
        vs[e] = kv_in(fetch_v(cur, e, head_off));
        // @endif
      }
    }
    // @end
    // @endif
    // @else
    if (VE != 0u) {
      // @unroll I VPT
      // @if VT
      vp_I = fetch_v_at(cur, lid + NT * I, head_off, kt_I);
      // @else
      vp_I = fetch_v(cur, lid + NT * I, head_off);
      // @endif
      // @end
    }
    // @endif
    workgroupBarrier(); // B2: K staged (and V with SG)

    // S = Q K^T (log2 domain): per dim, outer products of Q^T quads and key scalars.
    // Explicit initialisers in loops: naga does not re-zero an uninitialised `var` there.
    // @unroll R TM4
    // @unroll N TN
    var s_R_N = vec4<f32>(0.0);
    // @end
    // @end
    for (var d0 = 0u; d0 < D4; d0 += UD) {
      // @if HM
      // @unroll R TM4
      // @unroll N TN
      var h_R_N = vec4<f16>(0.0);
      // @end
      // @end
      // @endif
      // @unroll U UD
      {
        let d4 = d0 + U;
        // @unroll N TN
        // @if HM
        let k_N = kv[key_N * KSTR4 + kcol(key_N, d4)];
        // @else
        let k_N = vec4<f32>(kv[key_N * KSTR4 + kcol(key_N, d4)]);
        // @endif
        // @end
        // @if Q8
        // @unroll I 4
        {
          let w = qt8[(4u * d4 + I) * RG + rg];
          let qa = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
          let qb = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
          // @unroll N TN
          s_0_N = fma(qa, vec4<f32>(k_N[I]), s_0_N);
          s_1_N = fma(qb, vec4<f32>(k_N[I]), s_1_N);
          // @end
        }
        // @end
        // @else
        // @unroll I 4
        // @unroll R TM4
        {
          // @if HM
          let qv = qt[(4u * d4 + I) * BR4 + rq_R];
          // @unroll N TN
          h_R_N = fma(qv, vec4<f16>(k_N[I]), h_R_N);
          // @end
          // @else
          let qv = vec4<f32>(qt[(4u * d4 + I) * BR4 + rq_R]);
          // @unroll N TN
          s_R_N = fma(qv, vec4<f32>(k_N[I]), s_R_N);
          // @end
          // @endif
        }
        // @end
        // @end
        // @endif
      }
      // @end
      // @if HM
      // @unroll R TM4
      // @unroll N TN
      s_R_N += vec4<f32>(h_R_N);
      // @end
      // @end
      // @endif
    }

    // @if HQ
    // @unroll R TM4
    // @unroll N TN
    s_R_N *= params.scale_log2;
    // @end
    // @end
    // @endif

    // Online softmax: chunk row max across the CG threads of a row group, then rescale.
    // @if SG
    // Lane maxima first: where no lane of the subgroup has a score above its row's running max
    // (most chunks of a long row), the row maxima cannot move, so the reductions, alpha and the
    // rescale are skipped (subgroupAny is uniform over the subgroup); the values are the same.
    var grow = false;
    // @unroll R TM4
    var mx_R = vec4<f32>(NEG);
    // @unroll N TN
    s_R_N = select(s_R_N, vec4<f32>(NEG), key_N >= cur.kc);
    mx_R = max(mx_R, s_R_N);
    // @end
    grow = grow || any(mx_R > m_R);
    // @end
    if (subgroupAny(grow)) {
      // @unroll R TM4
      {
        let m_new = max(m_R, row_max(mx_R));
        let alpha = exp2(m_R - m_new);
        m_R = m_new;
        l_R *= alpha;
        // alpha is exactly 1 where a row's max did not move; the rows of a row group agree, so
        // the branch is uniform there.
        if (any(alpha != vec4<f32>(1.0))) {
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T *= alpha[C];
          // @end
          // @end
        }
      }
      // @end
    }
    // @unroll R TM4
    {
      var sum = vec4<f32>(0.0);
      // @unroll N TN
      s_R_N = exp2(s_R_N - m_R);
      sum += s_R_N;
      // @end
      l_R += sum;
    }
    // @end
    // @if SV
    workgroupBarrier(); // B3: K consumed; V goes over it
    if (VE == 0u) {
      // @unroll I VPT
      // @if VT
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
    workgroupBarrier(); // B4: V staged
    // @endif
    let nxt = next_chunk(cur, count, list_base);
    // @if DENSE
    // @else
    // @unroll I KPT
    kt_I = chunk_token(nxt, (lid + NT * I) / D4);
    // @end
    // @endif
    if (PF != 0u) {
      // @unroll I KPT
      // @if DENSE
      kp_I = fetch_k(nxt, lid + NT * I, head_off);
      // @else
      kp_I = fetch_k_at(nxt, lid + NT * I, head_off, kt_I);
      // @endif
      // @end
    }
    // O += P V: p of key c + CG*N is s_R_N of lane c (keys >= kc have p = 0 and zero V). With
    // KH a lane takes the keys of its subgroup half (kh..) at dims dcol. With PH, P (in [0, 1])
    // and V are f16 and each run of UJ keys is summed in f16 registers, then added into O.
    // @if PH
    // @unroll R TM4
    // @unroll N TN
    let ph_R_N = vec4<f16>(s_R_N);
    // @end
    // @end
    // @endif
    // @unroll N TN
    for (var c0 = 0u; c0 < (CG >> KH); c0 += UJ) {
      // @if PH
      // @unroll R TM4
      // @unroll C 4
      // @unroll T TD4
      var a_R_C_T = vec4<f16>(0.0);
      // @end
      // @end
      // @end
      // @endif
      // @unroll U UJ
      {
        let c = c0 + U + kh;
        // @unroll T TD4
        // @if SV
        let v_T = pv_in(kv[(c + CG * N) * DP4 + dcol + (CG >> KH) * T]);
        // @else
        let v_T = pv_in(vs[(c + CG * N) * DP4 + dcol + (CG >> KH) * T]);
        // @endif
        // @end
        // @unroll R TM4
        {
          // @if PH
          let p = subgroupShuffle(ph_R_N, sbase + c);
          // @unroll C 4
          // @unroll T TD4
          a_R_C_T = fma(vec4<f16>(p[C]), v_T, a_R_C_T);
          // @end
          // @end
          // @else
          let p = subgroupShuffle(s_R_N, sbase + c);
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T = fma(vec4<f32>(p[C]), v_T, o_R_C_T);
          // @end
          // @end
          // @endif
        }
        // @end
      }
      // @end
      // @if PH
      // @unroll R TM4
      // @unroll C 4
      // @unroll T TD4
      o_R_C_T += vec4<f32>(a_R_C_T);
      // @end
      // @end
      // @end
      // @endif
    }
    // @end
    // @else
    // @unroll R TM4
    {
      var mx = vec4<f32>(NEG);
      // @unroll N TN
      s_R_N = select(s_R_N, vec4<f32>(NEG), key_N >= cur.kc);
      mx = max(mx, s_R_N);
      // @end
      red[rq_R * CG + cg] = mx;
    }
    // @end
    workgroupBarrier(); // B3: K consumed, partial maxima complete
    // @unroll R TM4
    {
      var mx = red[rq_R * CG];
      for (var c = 1u; c < CG; c++) {
        mx = max(mx, red[rq_R * CG + c]);
      }
      let m_new = max(m_R, mx);
      let alpha = exp2(m_R - m_new);
      m_R = m_new;
      var sum = vec4<f32>(0.0);
      // @unroll N TN
      let p_N = exp2(s_R_N - m_new);
      pt[key_N * PSTR4 + rq_R] = p_N;
      sum += p_N;
      // @end
      l_R = l_R * alpha + sum;
      // @unroll C 4
      // @unroll T TD4
      o_R_C_T *= alpha[C];
      // @end
      // @end
    }
    // @end
    if (VE == 0u) {
      // @unroll I VPT
      // @if VT
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
    workgroupBarrier(); // B4: P and V staged

    let nxt = next_chunk(cur, count, list_base);
    // @if DENSE
    // @else
    // @unroll I KPT
    kt_I = chunk_token(nxt, (lid + NT * I) / D4);
    // @end
    // @endif
    if (PF != 0u) {
      // @unroll I KPT
      // @if DENSE
      kp_I = fetch_k(nxt, lid + NT * I, head_off);
      // @else
      kp_I = fetch_k_at(nxt, lid + NT * I, head_off, kt_I);
      // @endif
      // @end
    }

    // O += P V (keys >= kc have p = 0 and zero V).
    for (var j0 = 0u; j0 < BC; j0 += UJ) {
      // @unroll U UJ
      {
        let j = j0 + U;
        // @unroll T TD4
        let v_T = vec4<f32>(kv[j * DP4 + cg + CG * T]);
        // @end
        // @unroll R TM4
        {
          let p = pt[j * PSTR4 + rq_R];
          // @unroll C 4
          // @unroll T TD4
          o_R_C_T = fma(vec4<f32>(p[C]), v_T, o_R_C_T);
          // @end
          // @end
        }
        // @end
      }
      // @end
    }
    // @endif
    cur = nxt;
  }

  // l = sum of the CG per-thread partials; O / l to the raster position of each row.
  // @if SG
  // @if KH
  // The halves' partial sums of O, added (then the lower half stores).
  // @unroll R TM4
  // @unroll C 4
  // @unroll T TD4
  o_R_C_T += subgroupShuffleXor(o_R_C_T, CG >> 1u);
  // @end
  // @end
  // @end
  // @endif
  // @unroll R TM4
  {
    let l = row_sum(l_R);
    let inv = select(vec4<f32>(0.0), 1.0 / l, l > vec4<f32>(0.0));
    if (kh == 0u) {
      // @unroll C 4
      // @unroll T TD4
      store_row(4u * rq_R + C, dcol + (CG >> KH) * T, o_R_C_T, inv[C], rows, row_start, head_off);
      // @end
      // @end
    }
  }
  // @end
  // @else
  workgroupBarrier();
  // @unroll R TM4
  red[rq_R * CG + cg] = l_R;
  // @end
  workgroupBarrier();
  // @unroll R TM4
  {
    var l = vec4<f32>(0.0);
    for (var c = 0u; c < CG; c++) {
      l += red[rq_R * CG + c];
    }
    let inv = select(vec4<f32>(0.0), 1.0 / l, l > vec4<f32>(0.0));
    // @unroll C 4
    // @unroll T TD4
    store_row(4u * rq_R + C, cg + CG * T, o_R_C_T, inv[C], rows, row_start, head_off);
    // @end
    // @end
  }
  // @end
  // @endif
}
