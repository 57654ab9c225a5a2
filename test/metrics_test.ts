import assert from "node:assert/strict";
import {
  compareOutputs,
  denseStats,
  draftMap,
  effectiveKeys,
  maskPairs,
  maskRecall,
  oracleRecall,
  oracleRecallAtPairs,
} from "../src/metrics.ts";
import {
  attentionF64,
  draftMap as refDraftMap,
  strides,
  toBHND,
  tokenOrder,
  windowMeans,
} from "./reference.ts";

function close(a: number, b: number, tol = 1e-12): boolean {
  return Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));
}

/** A seeded stream of numbers in [-1, 1). */
function noise(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

Deno.test("metrics: compareOutputs on hand-computed values", () => {
  const e = compareOutputs(new Float32Array([3, 4]), new Float32Array([3, 3]));
  assert.ok(close(e.relL2, 0.2));
  assert.ok(close(e.cosine, 21 / (5 * Math.sqrt(18))));
  assert.ok(close(e.psnr, 10 * Math.log10(16 / 0.5))); // peak 4, MSE 1/2
  assert.equal(e.maxAbsError, 1);
  const same = compareOutputs([1, -2], [1, -2]);
  assert.equal(same.relL2, 0);
  assert.equal(same.cosine, 1);
  assert.equal(same.psnr, Infinity);
  assert.ok(Number.isNaN(compareOutputs([1, 2], [1, NaN]).maxAbsError));
});

Deno.test("metrics: denseStats on a two-token case by hand", () => {
  // headDim 4, scale 1/2: logits of query 0 are (1, 0), of query 1 are (0, 0).
  const q = new Float32Array([2, 0, 0, 0, 0, 0, 0, 0]);
  const k = new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]);
  const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2, pool: [1, 1] as const };
  const s = denseStats(q, k, shape);
  const p = Math.E / (Math.E + 1);
  assert.equal(s.g, 2);
  assert.deepEqual(Array.from(s.windowLen), [1, 1]);
  const want = [p, 1 - p, 0.5, 0.5];
  want.forEach((x, i) => assert.ok(close(s.blockMass[i], x), `${i}: ${s.blockMass[i]} vs ${x}`));
  const h0 = -(p * Math.log(p) + (1 - p) * Math.log(1 - p));
  assert.ok(close(s.effectiveKeys[0], (Math.exp(h0) + 2) / 2));
  // Both tokens in one window: one block holding both rows.
  const one = denseStats(q, k, { ...shape, pool: [1, 2] as const });
  assert.equal(one.g, 1);
  assert.ok(close(one.blockMass[0], 2));
});

Deno.test("metrics: denseStats matches a brute-force tokens^2 computation", () => {
  // Ragged windows, text before the video, BHSD, batch 2.
  const geom = {
    frames: 2,
    height: 5,
    width: 7,
    textTokens: 3,
    textPosition: "before" as const,
    poolH: 2,
    poolW: 4,
  };
  const dims = { batch: 2, tokens: 73, heads: 2, headDim: 8, layout: "BHSD" as const };
  const shape = { ...geom, ...dims, pool: [2, 4] as const };
  const n = 2 * 73 * 2 * 8;
  const q = noise(n, 1).map((x) => 3 * x), k = noise(n, 2).map((x) => 3 * x), v = noise(n, 3);
  const s = denseStats(q, k, shape, { v });
  const ord = tokenOrder(geom);
  const g = ord.g;
  assert.equal(s.g, g);
  const scale = 1 / Math.sqrt(8);
  // Brute force: every probability, summed into blocks.
  const Q = toBHND(q, dims), K = toBHND(k, dims);
  for (let bh = 0; bh < 4; bh++) {
    const mass = new Float64Array(g * g), text = new Float64Array(g);
    let eff = 0;
    for (let i = 0; i < 73; i++) {
      if (ord.blockOf[i] < 0) continue;
      const l = Array.from({ length: 73 }, (_, j) => {
        let a = 0;
        for (let d = 0; d < 8; d++) a += Q[(bh * 73 + i) * 8 + d] * K[(bh * 73 + j) * 8 + d];
        return a * scale;
      });
      const m = Math.max(...l);
      const z = l.reduce((acc, x) => acc + Math.exp(x - m), 0);
      let h = 0;
      l.forEach((x, j) => {
        const p = Math.exp(x - m) / z;
        h -= p * Math.log(p);
        if (ord.blockOf[j] < 0) text[ord.blockOf[i]] += p;
        else mass[ord.blockOf[i] * g + ord.blockOf[j]] += p;
      });
      eff += Math.exp(h);
    }
    for (let x = 0; x < g * g; x++) assert.ok(close(s.blockMass[bh * g * g + x], mass[x], 1e-10));
    for (let x = 0; x < g; x++) assert.ok(close(s.textMass[bh * g + x], text[x], 1e-10));
    assert.ok(close(s.effectiveKeys[bh], eff / 70, 1e-10));
  }
  // Rows of the block masses sum to the window's token count minus its text mass.
  for (let bh = 0; bh < 4; bh++) {
    for (let i = 0; i < g; i++) {
      let row = s.textMass[bh * g + i];
      for (let j = 0; j < g; j++) row += s.blockMass[(bh * g + i) * g + j];
      assert.ok(close(row, s.windowLen[i], 1e-10));
    }
  }
  // The float64 output equals the reference's dense attention.
  const out = attentionF64({ q, k, v, dims, scale });
  assert.ok(compareOutputs(out, s.output!).relL2 < 1e-12);
  assert.ok(strides(dims).sT === 8);
});

Deno.test("metrics: recall of the full mask is 1, oracle >= mask recall at equal size", () => {
  const shape = {
    batch: 2,
    heads: 3,
    headDim: 8,
    frames: 3,
    height: 6,
    width: 10,
    pool: [3, 4] as const,
  };
  const n = 2 * 180 * 3 * 8;
  const s = denseStats(noise(n, 4).map((x) => 4 * x), noise(n, 5).map((x) => 4 * x), shape);
  const g = s.g;
  assert.equal(g, 3 * 2 * 3);
  const full = maskRecall(s, new Uint8Array(6 * g * g).fill(1));
  assert.ok(full.perHead.every((x) => close(x, 1)));
  assert.ok(full.kept.every((x) => x === g * g));
  assert.equal(maskRecall(s, new Uint8Array(6 * g * g)).mean, 0);
  assert.ok(close(oracleRecall(s, g * g).mean, 1));
  let seed = 9;
  for (let trial = 0; trial < 5; trial++) {
    const mask = noise(6 * g * g, seed++).map((x) => (x > 0.4 - trial * 0.3 ? 1 : 0));
    const m = maskRecall(s, mask);
    const o = oracleRecall(s, m.kept);
    assert.deepEqual(o.kept, m.kept);
    for (let bh = 0; bh < 6; bh++) assert.ok(o.perHead[bh] >= m.perHead[bh] - 1e-12);
    assert.ok(o.mean >= m.mean && o.min >= 0 && o.mean <= 1 + 1e-12);
  }
});

Deno.test("metrics: token pairs of a mask; the oracle at equal pairs bounds every mask", () => {
  // Ragged windows: 6 x 10 tokens under 4 x 4 windows are 16, 8, 8 and 4 tokens wide.
  const shape = { batch: 2, heads: 2, headDim: 8, frames: 2, height: 6, width: 10 };
  const pool = [4, 4] as const;
  const n = 2 * 120 * 2 * 8;
  const s = denseStats(noise(n, 6).map((x) => 5 * x), noise(n, 7).map((x) => 5 * x), {
    ...shape,
    pool,
  });
  const g = s.g;
  assert.equal(g, 2 * 2 * 3);
  assert.deepEqual(Array.from(s.windowLen.subarray(0, 6)), [16, 16, 8, 8, 8, 4]);
  const all = maskPairs(s, new Uint8Array(4 * g * g).fill(1));
  assert.ok(all.every((x) => x === 120 * 120));
  assert.ok(close(oracleRecallAtPairs(s, 120 * 120).mean, 1));
  assert.equal(oracleRecallAtPairs(s, 0).mean, 0);
  let seed = 21;
  for (let trial = 0; trial < 6; trial++) {
    const mask = noise(4 * g * g, seed++).map((x) => (x > 0.5 - trial * 0.3 ? 1 : 0));
    const pairs = maskPairs(s, mask);
    // Pairs by hand for the first head.
    let want = 0;
    for (let e = 0; e < g * g; e++) {
      if (mask[e]) want += s.windowLen[Math.floor(e / g)] * s.windowLen[e % g];
    }
    assert.equal(pairs[0], want);
    const m = maskRecall(s, mask);
    const o = oracleRecallAtPairs(s, pairs);
    for (let bh = 0; bh < 4; bh++) assert.ok(o.perHead[bh] >= m.perHead[bh] - 1e-12, `${bh}`);
    // More pairs never keep less.
    const more = oracleRecallAtPairs(s, Array.from(pairs, (x) => x + 64));
    for (let bh = 0; bh < 4; bh++) assert.ok(more.perHead[bh] >= o.perHead[bh] - 1e-12);
  }
  // Equal windows: at whole-block budgets the oracle at equal pairs is the block oracle.
  const even = denseStats(noise(64 * 8, 8).map((x) => 5 * x), noise(64 * 8, 9), {
    heads: 1,
    headDim: 8,
    frames: 2,
    height: 4,
    width: 8,
    pool: [2, 4],
  });
  for (const blocks of [1, 5, 17, 64]) {
    assert.ok(close(oracleRecallAtPairs(even, blocks * 64).mean, oracleRecall(even, blocks).mean));
  }
});

Deno.test("metrics: oracle recall picks the heaviest blocks", () => {
  // 1 frame of 1 x 3 tokens, windows of 1 token: g = 3; query 0 puts almost all mass on key 2.
  const D = 4;
  const q = new Float32Array([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const k = new Float32Array([0, 0, 0, 0, 0.1, 0, 0, 0, 1, 0, 0, 0]);
  const s = denseStats(q, k, {
    heads: 1,
    headDim: D,
    frames: 1,
    height: 1,
    width: 3,
    pool: [1, 1],
  });
  // Total video mass 3 (three rows); the heaviest block is (0, 2), then the uniform 1/3s.
  const p02 = Math.exp(10) / (1 + Math.exp(1) + Math.exp(10));
  assert.ok(close(oracleRecall(s, 1).mean, p02 / 3));
  assert.ok(close(oracleRecall(s, 9).mean, 1));
  const mask = new Uint8Array(9);
  mask[0 * 3 + 2] = 1;
  assert.ok(close(maskRecall(s, mask).mean, p02 / 3));
});

Deno.test("metrics: effectiveKeys over all rows matches denseStats; draftMap matches reference", () => {
  const geom = {
    frames: 2,
    height: 4,
    width: 9,
    textTokens: 5,
    textPosition: "after" as const,
    poolH: 2,
    poolW: 4,
  };
  const dims = { batch: 1, tokens: 77, heads: 2, headDim: 8, layout: "BSHD" as const };
  const shape = { ...geom, ...dims, pool: [2, 4] as const };
  const n = 77 * 2 * 8;
  const q = noise(n, 11).map((x) => 2 * x), k = noise(n, 12).map((x) => 2 * x);
  const s = denseStats(q, k, shape);
  const all = effectiveKeys(q, k, shape, { samples: 1000 });
  assert.ok(close(all, (s.effectiveKeys[0] + s.effectiveKeys[1]) / 2, 1e-10));
  const sampled = effectiveKeys(q, k, shape, { samples: 8 });
  assert.ok(sampled >= 1 && sampled <= 77);

  const ord = tokenOrder(geom);
  const want = refDraftMap(windowMeans(q, dims, ord), windowMeans(k, dims, ord), {
    batch: 1,
    heads: 2,
    g: ord.g,
    headDim: 8,
    scale: 1 / Math.sqrt(8),
  });
  const got = draftMap(q, k, shape);
  assert.equal(got.length, want.length);
  for (let i = 0; i < got.length; i++) assert.ok(close(got[i], want[i], 1e-12));
});

Deno.test("metrics: wrong lengths are typed errors", () => {
  const shape = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2 };
  assert.throws(() => denseStats(new Float32Array(7), new Float32Array(8), shape), /Invalid q/);
  const s = denseStats(new Float32Array(8), new Float32Array(8), shape);
  assert.throws(() => maskRecall(s, new Uint8Array(3)), /Invalid mask/);
  assert.throws(() => compareOutputs([1, 2], [1]), /Invalid approx/);
  assert.throws(() => denseStats([], [], { ...shape, frames: 0 }), /Invalid frames/);
});
