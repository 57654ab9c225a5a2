// Shared part of the register-tiled flash kernels (wgsl/flash_tiled.wgsl: row statistics and P
// through workgroup memory; wgsl/flash_subgroup.wgsl: through subgroup operations), included by
// `// @include flash_tile` as the first line of each: storage, bindings, placeholders and flags,
// overrides common to both; wgsl/flash_tile_load.wgsl holds the Q^T buffer and the loads. The
// kernels' `main` is built from the steps flash_item, flash_tile_setup, flash_tile_stage_k,
// flash_tile_s, flash_tile_stage_v and flash_tile_next (one file each) and its own online
// softmax and P V.
//
// Workgroup = one work item (tile, rowStart, rows) x one (batch, head) of the piece; rowStart is
// an absolute window-order position, `tile` selects the block list (unused in dense mode); the
// item's keys come chunk by chunk from `next_chunk` (wgsl/flash_io.wgsl).
// Threads form an RG x CG grid; thread (rg, cg) owns
//   - query rows 4*rq + c, c < 4, for its row quads rq = rg*TM4 + R, R < TM4 (TM = 4*TM4 rows)
//   - keys cg + CG*N, N < TN, of each chunk (so BC = TN*CG; strided so that neighbouring
//     threads read K rows in different banks)
//   - output dims 4*(cg + CG*T).., T < TD4 (so DP = 4*CG*TD4 >= headDim; padded dims are
//     zero-filled and never stored; KEY_HALVES of the subgroup kernel changes this).
// Every register tile is a set of named vec4 variables (s_R_N: scores of 4 rows x key N;
// o_R_C_T: row 4*rq_R + C, dims T), written once inside `// @unroll X COUNT` blocks that
// src/webgpu/specialize.ts repeats for X = 0..COUNT-1 (suffix `_X` -> `_i`, token `X` -> `iu`):
// these files are templates, valid WGSL once expanded. Loop-indexed private arrays would leave
// registers; named values stay in them.
//
// Workgroup memory (f32, except where F16_KV / F16_QT ask for f16, see below; `kv` declared by
// each kernel):
//   qt  Q^T of the tile, scaled by scale*log2(e): qt[d*BR4 + rq] = rows 4rq..4rq+3 at dim d
//       (qt8 with PACKED_QT).
//   kv  the chunk's K rows (stride D4+1 vec4: conflict-free column reads; with SWIZZLE_K stride
//       D4 and columns XOR-swizzled by row, as conflict-free), then its V rows (stride DP4)
//       once S is done.
// f16 inputs on a device with shader-f16 may keep kv in f16 (F16_KV: the halves are stored as
// they came, widened to f32 where read) and Q^T too (F16_QT: Q unscaled, so exactly the inputs,
// and S scaled after the dot products instead), halving the workgroup memory of those tiles;
// both are exact. With F16_S the S products are f16 too, summed in f16 over UD*4 dims, then into
// the f32 scores: faster, but its error grows with the logits (not in the table).
// Per chunk: S = Q K^T as outer products (per dim: TM4 vec4 of Q^T, TN scalars of K, TM4*TN
// vec4 FMAs), online softmax in the log2 domain, O += P V (per key: TM4 vec4 of P, TD4 vec4 of
// V, TM*TD4 vec4 FMAs); both loops unrolled UD / UJ times in the source, so the loads of several
// steps can be hoisted. Optionally global loads are issued a phase ahead of their use
// (registers for occupancy): the next chunk's K during P V (PREFETCH_K), the chunk's V during S
// (EARLY_V). f32 accumulators and statistics; a row with no key (l = 0) writes zeros.
//
// Tensors are read through strides in vec4 units: element (b, t, h, 4*c) of the piece is at
// base + b*s_b + t*s_t + h*s_h + c, where (b, h) = (bh / heads_per_row, bh % heads_per_row).
// Query/key window-order position p maps to raster token order[p] (identity in dense mode).

// @if ENABLE_F16
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

// Flags (0 or 1, set by the host from the variant's options, see src/webgpu/variants.ts).
/** 1: load the next chunk's K during P V; 0: right before staging it. */
const PREFETCH_K: u32 = 0u;
/** 1: load the chunk's V before S (in flight during S); 0: right before staging it. */
const EARLY_V: u32 = 0u;
/** 1: K/V chunk in f16 workgroup memory (f16 storage only). */
const F16_KV: u32 = 0u;
/** 1: Q^T in f16 workgroup memory. */
const F16_QT: u32 = 0u;
/** 1: S in f16 arithmetic over UD*4 dims, summed into f32 (needs F16_KV and F16_QT). */
const F16_S: u32 = 0u;
/** 1: any of F16_KV, F16_QT, F16_S (the module enables f16). */
const ENABLE_F16: u32 = 0u;
/**
 * 1: K rows unpadded in `kv` (stride D4), column c of row j stored at c ^ (j % D4) (D4 a power of
 * two): still conflict-free column reads, one vec4 per key less memory than the padded stride.
 */
const SWIZZLE_K: u32 = 0u;
/**
 * 1 (with F16_QT, TM4 = 2): Q^T packed 8 rows per vec4<u32> (f16 pairs), so that one 16-byte
 * load gives a thread the 8 rows of a dim where F16_QT's vec4<f16> loads give 4: half the
 * workgroup-memory loads in S. Exact (the values are f16).
 */
const PACKED_QT: u32 = 0u;
/**
 * 1: a thread's V rows are its K rows (DP = D, so VPT = KPT): V fetches reuse the K rows'
 * tokens (kt_I) instead of looking them up again (sparse pipelines only: 0 where DENSE).
 */
const V_TOKENS_FROM_K: u32 = 0u;

// @if F16_KV
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
// @if F16_QT
alias Qt4 = vec4<f16>;
// @else
alias Qt4 = vec4<f32>;
// @endif

/** Masked score: finite so that exp2(NEG - m) = 0 and NEG - NEG never makes NaN. */
const NEG: f32 = -3.0e38;

// Overrides of both kernels. Each kernel adds DP4 (V row stride in vec4), then includes
// flash_tile_load (the Q^T buffer, loads and stores) and declares its own workgroup buffers:
// naga (Deno 2.9.6) panics building the pipeline when an override follows a workgroup array
// sized by overrides, so every override comes before every buffer.
override RG: u32 = 8u;
override CG: u32 = 8u;
override D: u32 = 128u;
override NT: u32 = RG * CG;
override BR4: u32 = TM4 * RG;
override BC: u32 = TN * CG;
override D4: u32 = D / 4u;
override KSTR4: u32 = D4 + 1u - SWIZZLE_K;
