// Sampled block importance (src/selection.ts, estimators "sampled" and "hybrid"), one workgroup per
// (batch, head, QT video query tiles). The n_i sampled queries of tile i (window-order positions
// from the host's table) attend exactly to every key: pass A finds each sample's softmax max M
// and normaliser Z over all `tokens` keys (text included) with a per-thread online softmax and
// a workgroup reduction; pass B recomputes the logits, each thread summing exp(s - M) / Z over
// the keys of whole video tiles j. I[i][j] = coef.x * (sum over the samples), written to P
// ("sampled") or mixed with the draft map already there: 0.5 * (coef.y * P[i][j] + I[i][j])
// ("hybrid"). A workgroup takes QT consecutive query tiles (one K read serves all their
// samples) and SG samples of each at a time (QT * SG sample rows fit 8 KiB of workgroup
// memory; the host sets both); later sample groups add to P. P holds a group of `nbh` pairs
// (scratch): its row bh is pair pair0 + bh of the piece in q and k.
// The WebAssembly backend computes the same map (asm/selection.ts `sampledMap`) in another order of
// operations; the masks of the two agree wherever the map has no near-tie at a threshold.

// @include storage
// @include estimate_io

/** Samples per group and tiles per workgroup (size the per-thread arrays); set by the host. */
const SG: u32 = 8u;
const QT: u32 = 1u;
/** Sample rows of a group: slot r is sample s0 + r % SG of tile i0 + r / SG. */
const RS: u32 = QT * SG;
const NEG: f32 = -3.0e38;

override D: u32 = 128u;
override WG: u32 = 64u;
override D4: u32 = D / 4u;

@group(0) @binding(7) var<storage, read_write> p: array<f32>;

var<workgroup> qs: array<vec4<f32>, RS * D4>;
var<workgroup> red: array<f32, RS * WG>;
/** Per slot of the group: M at [r], Z at [RS + r]; 0 rows count as absent (Z = 0). */
var<workgroup> stat: array<f32, 2u * RS>;

/** Sums (op 0) or maxes (op 1) red[r * WG + 0 .. WG) into red[r * WG] for every r. */
fn reduce(lid: u32, op: u32) {
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid < half) {
      for (var r = 0u; r < RS; r++) {
        let a = red[r * WG + lid];
        let b = red[r * WG + lid + half];
        red[r * WG + lid] = select(a + b, max(a, b), op == 1u);
      }
    }
    workgroupBarrier();
  }
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

  for (var s0 = 0u; s0 < n; s0 += SG) {
    for (var idx = lid; idx < RS * D4; idx += WG) {
      let r = idx / D4;
      let i = i0 + r / SG;
      let sample = s0 + r % SG;
      var x = vec4<f32>(0.0);
      if (sample < count_of(i)) {
        let pos = samples[i * params.stride + 1u + sample];
        x = load4(q[params.base_q + order[pos] * params.s_t + head_off + idx % D4]);
      }
      qs[idx] = x;
    }
    workgroupBarrier();

    // Pass A: online max and normaliser per thread, over its share of every key.
    var m = array<f32, RS>();
    var z = array<f32, RS>();
    for (var r = 0u; r < RS; r++) {
      m[r] = NEG;
    }
    // Two keys per step, so that each sample row read from workgroup memory serves two dots.
    for (var key = 2u * lid; key < params.tokens; key += 2u * WG) {
      let two = key + 1u < params.tokens;
      // Explicit initialisers: naga does not re-zero an uninitialised `var` declared in a loop.
      var s = array<f32, RS>();
      var s2 = array<f32, RS>();
      let kb = params.base_k + key * params.s_t + head_off;
      let kb2 = select(kb, kb + params.s_t, two);
      for (var c = 0u; c < D4; c++) {
        let kv = load4(k[kb + c]);
        let kv2 = load4(k[kb2 + c]);
        for (var r = 0u; r < RS; r++) {
          let qv = qs[r * D4 + c];
          s[r] += dot(qv, kv);
          s2[r] += dot(qv, kv2);
        }
      }
      for (var r = 0u; r < RS; r++) {
        // The second key of a last odd step repeats the first and is not counted.
        let x = s[r] * scale;
        let x2 = select(NEG, s2[r] * scale, two);
        let mx = max(m[r], max(x, x2));
        z[r] = z[r] * exp(m[r] - mx) + exp(x - mx) + exp(x2 - mx);
        m[r] = mx;
      }
    }
    for (var r = 0u; r < RS; r++) {
      red[r * WG + lid] = m[r];
    }
    workgroupBarrier();
    reduce(lid, 1u);
    if (lid < RS) {
      stat[lid] = red[lid * WG];
    }
    workgroupBarrier();
    for (var r = 0u; r < RS; r++) {
      red[r * WG + lid] = z[r] * exp(m[r] - stat[r]);
    }
    workgroupBarrier();
    reduce(lid, 0u);
    if (lid < RS) {
      stat[RS + lid] = red[lid * WG];
    }
    workgroupBarrier();

    // Pass B: each sample's probability mass on each video tile. Thread lid takes tiles lid,
    // lid + WG, ... whole (keys in window order), so no reduction and no barrier is needed.
    for (var j = lid; j < g; j += WG) {
      let t = tiles[j];
      var b = array<f32, RS>();
      for (var e = 0u; e < t.y; e += 2u) {
        let two = e + 1u < t.y;
        var s = array<f32, RS>();
        var s2 = array<f32, RS>();
        let kb = params.base_k + order[t.x + e] * params.s_t + head_off;
        // The second key of a last odd step repeats the first and is not counted.
        let kb2 = params.base_k + order[t.x + min(e + 1u, t.y - 1u)] * params.s_t + head_off;
        for (var c = 0u; c < D4; c++) {
          let kv = load4(k[kb + c]);
          let kv2 = load4(k[kb2 + c]);
          for (var r = 0u; r < RS; r++) {
            let qv = qs[r * D4 + c];
            s[r] += dot(qv, kv);
            s2[r] += dot(qv, kv2);
          }
        }
        for (var r = 0u; r < RS; r++) {
          b[r] += exp(s[r] * scale - stat[r]) + select(0.0, exp(s2[r] * scale - stat[r]), two);
        }
      }
      for (var tq = 0u; tq < QT; tq++) {
        let i = i0 + tq;
        let ns = min(SG, max(count_of(i), s0) - s0);
        var acc = 0.0;
        for (var u = 0u; u < SG; u++) {
          if (u < ns) {
            acc += b[tq * SG + u] / stat[RS + tq * SG + u];
          }
        }
        if (ns > 0u) {
          let cf = coef[i];
          // Density (budget "tokens", bit 1 of `hybrid`): mass per key token of tile j.
          let est = select(cf.x * acc, cf.x * acc * (1.0 / f32(t.y)), (params.hybrid & 2u) != 0u);
          let at = (bh * g + i) * g + j;
          let mix = (params.hybrid & 1u) != 0u;
          if (s0 == 0u) {
            p[at] = select(est, 0.5 * (cf.y * p[at] + est), mix);
          } else {
            p[at] = p[at] + select(est, 0.5 * est, mix);
          }
        }
      }
    }
    workgroupBarrier(); // everyone is done with qs and stat before the next sample group
  }
}
