// Sampled block importance (src/selection.ts, estimators "sampled" and "hybrid"), one workgroup per
// (batch, head, QT video query tiles). The n_i sampled queries of tile i (window-order positions
// from the host's table) attend exactly to every key, in one pass over the key tiles (window
// order, the text tiles after the video ones so that the softmax covers every key):
//
// - The workgroup stages CK keys of one tile at a time (coalesced: consecutive invocations read
//   consecutive vec4 of a key row) and each invocation takes one staged key against every
//   sample row, 4 logits per named vec4 register (no loop-indexed private arrays, which GPUs
//   spill), so each read of a staged key serves RSP rows.
// - Per (sample row, key tile) an online max m_t and sum l_t = sum exp(s - m_t), per invocation
//   over the tile's chunks, then across the CK invocations of a row (workgroup reduction).
//   LSE_t = m_t + log(l_t) goes to the scratch buffer, and the row's running (M, Z) takes it in.
// - After the last tile, mass_t = exp(LSE_t - (M + log Z)), read back by the same workgroup.
//
// Every logit is computed once (the kernel before this one computed each twice: max and
// normaliser first, then the per-tile mass), and each staged K row serves RSP sample rows.
// I[i][j] = coef.x * (sum over the samples of mass_j), written to P ("sampled") or mixed with the
// draft map already there: 0.5 * (coef.y * P[i][j] + I[i][j]) ("hybrid"), sample by sample. A
// workgroup takes QT consecutive query tiles and SG samples of each at a time (slot r: sample
// s0 + r % SG of tile i0 + r / SG; the host sets both from the row limit, the workgroup count
// and the scratch size); later sample groups add to P. P holds a group of `nbh` pairs
// (scratch): its row bh is pair pair0 + bh of the piece in q and k.
// The WebAssembly backend computes the same map (asm/selection.ts `sampledMap`) in another order of
// operations; the masks of the two agree wherever the map has no near-tie at a threshold.

// @include storage

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
  /** Key tiles, text included (the softmax runs over all of them; the map over the first g). */
  ntiles: u32,
}

/** Samples per group and tiles per workgroup; set by the host. */
const SG: u32 = 8u;
const QT: u32 = 1u;
/** Keys staged per step, a power of two (the reduction quarters it); set by the host. */
const CK: u32 = 64u;
/** Groups of 4 sample rows, ceil(QT * SG / 4): one vec4 of logits each; set by the host. */
const RG: u32 = 2u;
/** Sample rows of a group: slot r is sample s0 + r % SG of tile i0 + r / SG. */
const RS: u32 = QT * SG;
/** Rows padded to whole vec4 of logits (padding rows are zero queries, never read back). */
const RSP: u32 = 4u * RG;
/**
 * Invocations: one per staged key, against every row. The rows' vec4 registers are named
 * (`// @unroll`), and the row index of each workgroup-memory read is the same for all
 * invocations (a broadcast on GPUs, a scalar load on CPU implementations such as llvmpipe).
 */
const WG: u32 = CK;
const NEG: f32 = -3.0e38;

override D: u32 = 128u;
override D4: u32 = D / 4u;
/** Staged key row stride in Store4: one spare element, so that neighbouring invocations reading
 * "their" key rows at the same column hit different banks (a stride of D4 hits one bank). */
override KS: u32 = D4 + 1u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<Store4>;
@group(0) @binding(2) var<storage, read> k: array<Store4>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec2<u32>>;
/** Per tile: n_i, then the window-order positions of its samples (`stride` u32 per tile). */
@group(0) @binding(5) var<storage, read> samples: array<u32>;
/** Per tile: (len_i / (maxLen * n_i), len_i / maxLen). */
@group(0) @binding(6) var<storage, read> coef: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> p: array<f32>;
/** LSE per (pair, query tile, sample slot, key tile): ((bh * g + i) * SG + u) * g + j. */
@group(0) @binding(8) var<storage, read_write> lse_t: array<f32>;

var<workgroup> qs: array<vec4<f32>, RSP * D4>;
var<workgroup> ks: array<Store4, CK * KS>;
/** Per (row, key slot): the slot's (m, l) over the current tile, reduced to slot 0. */
var<workgroup> red_m: array<f32, RSP * CK>;
var<workgroup> red_l: array<f32, RSP * CK>;
/** Per row: the running (M, Z) over the tiles so far, then M + log Z over every key. Row r is
 * kept by invocation r % WG (fewer invocations than rows under small limits). */
var<workgroup> tot: array<vec2<f32>, RSP>;
var<workgroup> lse: array<f32, RSP>;

/** Samples of tile `i` (0 past the last tile). */
fn count_of(i: u32) -> u32 {
  if (i >= params.g) {
    return 0u;
  }
  return samples[i * params.stride];
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let wg = wid.x + wid.y * nwg.x;
  let g = params.g;
  let groups = (g + QT - 1u) / QT;
  if (wg >= params.nbh * groups) {
    return;
  }
  let bh = wg / groups;
  let i0 = (wg % groups) * QT;
  let pair = params.pair0 + bh;
  let head_off = (pair / params.heads_per_row) * params.s_b + (pair % params.heads_per_row) * params.s_h;
  var n = 0u;
  for (var t = 0u; t < QT; t++) {
    n = max(n, count_of(i0 + t));
  }
  let scale = params.scale;
  // Invocation lid: staged key lid against every row.
  let kb = lid * KS;

  for (var s0 = 0u; s0 < n; s0 += SG) {
    for (var idx = lid; idx < RSP * D4; idx += WG) {
      let r = idx / D4;
      let i = i0 + r / SG;
      let sample = s0 + r % SG;
      var x = vec4<f32>(0.0);
      if (r < RS && sample < count_of(i)) {
        let pos = samples[i * params.stride + 1u + sample];
        x = load4(q[params.base_q + order[pos] * params.s_t + head_off + idx % D4]);
      }
      qs[idx] = x;
    }
    // Row totals: online max and normaliser over the tiles' LSE.
    for (var r = lid; r < RS; r += WG) {
      tot[r] = vec2<f32>(NEG, 0.0);
    }
    for (var j = 0u; j < params.ntiles; j++) {
      let t = tiles[j];
      // @unroll R RG
      var m_R = vec4<f32>(NEG);
      var l_R = vec4<f32>(0.0);
      // @end
      for (var e0 = 0u; e0 < t.y; e0 += CK) {
        let cnt = min(CK, t.y - e0);
        // Everyone is done with the previous chunk of the tile. (Before a tile's first chunk,
        // the previous tile's reduction barriers already separate the last reads of ks.)
        if (e0 > 0u) {
          workgroupBarrier();
        }
        for (var idx = lid; idx < cnt * D4; idx += WG) {
          let key = idx / D4;
          let c = idx % D4;
          ks[key * KS + c] = k[params.base_k + order[t.x + e0 + key] * params.s_t + head_off + c];
        }
        workgroupBarrier();
        if (lid < cnt) {
          // @unroll R RG
          var s_R = vec4<f32>(0.0);
          // @end
          for (var c = 0u; c < D4; c++) {
            let kv = load4(ks[kb + c]);
            // @unroll R RG
            s_R += vec4<f32>(
              dot(qs[(4u * R) * D4 + c], kv),
              dot(qs[(4u * R + 1u) * D4 + c], kv),
              dot(qs[(4u * R + 2u) * D4 + c], kv),
              dot(qs[(4u * R + 3u) * D4 + c], kv),
            );
            // @end
          }
          // @unroll R RG
          {
            let x = s_R * scale;
            let mx = max(m_R, x);
            l_R = l_R * exp(m_R - mx) + exp(x - mx);
            m_R = mx;
          }
          // @end
        }
      }
      // The tile's (m, l) per row over its CK key slots. Slots without a key hold (NEG, 0),
      // which add nothing (exp(NEG - M) = 0 for any real M; 0 * exp(0) when both are NEG).
      // @unroll R RG
      red_m[(4u * R) * CK + lid] = m_R.x;
      red_m[(4u * R + 1u) * CK + lid] = m_R.y;
      red_m[(4u * R + 2u) * CK + lid] = m_R.z;
      red_m[(4u * R + 3u) * CK + lid] = m_R.w;
      red_l[(4u * R) * CK + lid] = l_R.x;
      red_l[(4u * R + 1u) * CK + lid] = l_R.y;
      red_l[(4u * R + 2u) * CK + lid] = l_R.z;
      red_l[(4u * R + 3u) * CK + lid] = l_R.w;
      // @end
      workgroupBarrier();
      // Four slots into one per step, down to at most 4 per row (2 barriers for 64 slots): the
      // entry at slot s < w / 4 takes s, s + w / 4, s + w / 2, s + 3w / 4 (no entry it writes is
      // read by another invocation in the same step). 64 -> 16 -> 4; 32 -> 8 -> 2; 16 -> 4.
      var w = CK;
      for (; w > 4u; w /= 4u) {
        let nw = w / 4u;
        for (var e = lid; e < RSP * nw; e += WG) {
          let x = (e / nw) * CK + e % nw;
          var mx = red_m[x];
          for (var a = 1u; a < 4u; a++) {
            mx = max(mx, red_m[x + a * nw]);
          }
          var sum = 0.0;
          for (var a = 0u; a < 4u; a++) {
            sum += red_l[x + a * nw] * exp(red_m[x + a * nw] - mx);
          }
          red_m[x] = mx;
          red_l[x] = sum;
        }
        workgroupBarrier();
      }
      // The last w <= 4 slots of each row, by the row's invocation.
      for (var r = lid; r < RS; r += WG) {
        let x = r * CK;
        var mt = red_m[x];
        for (var a = 1u; a < w; a++) {
          mt = max(mt, red_m[x + a]);
        }
        var lt = 0.0;
        for (var a = 0u; a < w; a++) {
          lt += red_l[x + a] * exp(red_m[x + a] - mt);
        }
        let i = i0 + r / SG;
        if (j < g && i < g) {
          lse_t[((bh * g + i) * SG + r % SG) * g + j] = mt + log(lt);
        }
        let tm = tot[r].x;
        let mx = max(tm, mt);
        tot[r] = vec2<f32>(mx, tot[r].y * exp(tm - mx) + lt * exp(mt - mx));
      }
      // No barrier here: the next tile writes red only after its first staging barrier, which
      // every reader above reaches after its reads (and ks was last read before the red
      // barrier above).
    }
    for (var r = lid; r < RS; r += WG) {
      lse[r] = tot[r].x + log(tot[r].y);
    }
    storageBarrier(); // lse_t written by the rows' invocations, read below by all
    workgroupBarrier();

    // Each sample's probability mass on each video tile, tile j by invocation j % WG. Samples
    // add into P one at a time (sample 0 writes or mixes), so that the sums do not depend on
    // how many samples a group holds (the host sizes groups by the scratch of a mask group).
    for (var j = lid; j < g; j += WG) {
      let len = tiles[j].y;
      let density = (params.hybrid & 2u) != 0u;
      let mix = (params.hybrid & 1u) != 0u;
      for (var tq = 0u; tq < QT; tq++) {
        let i = i0 + tq;
        let ns = min(SG, max(count_of(i), s0) - s0);
        if (ns > 0u) {
          let cf = coef[i];
          let at = (bh * g + i) * g + j;
          var v = p[at];
          for (var u = 0u; u < ns; u++) {
            let mass = exp(lse_t[((bh * g + i) * SG + u) * g + j] - lse[tq * SG + u]);
            // Density (budget "tokens", bit 1 of `hybrid`): mass per key token of tile j.
            let est = select(cf.x * mass, cf.x * mass * (1.0 / f32(len)), density);
            if (s0 + u == 0u) {
              v = select(est, 0.5 * (cf.y * v + est), mix);
            } else {
              v = v + select(est, 0.5 * est, mix);
            }
          }
          p[at] = v;
        }
      }
    }
    // Everyone is done with lse_t, lse and qs before the next sample group rewrites them.
    storageBarrier();
    workgroupBarrier();
  }
}
