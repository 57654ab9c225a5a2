/**
 * Sanity tests of the float64 reference itself (test/reference.ts): hand-computed examples and
 * brute-force re-derivations, so the conformance suite does not rest on an unchecked oracle.
 */
import assert from "node:assert/strict";
import {
  assertFinite,
  attentionF64,
  attentionNaive,
  blockMask,
  denseKeys,
  type Dims,
  draftAttentionRef,
  draftMap,
  draftMaskRef,
  fromBHND,
  keepCount,
  maskedKeys,
  maxAbsErr,
  randomInputs,
  type RefGeometry,
  relL2,
  Rng,
  selectBlocks,
  toBHND,
  tokenAllowed,
  tokenOrder,
  videoInputs,
  windowMeans,
} from "./reference.ts";

function geom(
  frames: number,
  height: number,
  width: number,
  extra: Partial<RefGeometry> = {},
): RefGeometry {
  return {
    frames,
    height,
    width,
    textTokens: 0,
    textPosition: "after",
    poolH: 8,
    poolW: 16,
    ...extra,
  };
}

Deno.test("reference: window order of a 1x3x5 grid with 2x2 windows, by hand", () => {
  // Raster index r*5 + c. Windows: rows {0,1},{2}; columns {0,1},{2,3},{4}.
  const after = tokenOrder(geom(1, 3, 5, { poolH: 2, poolW: 2, textTokens: 2 }));
  assert.equal(after.g, 6);
  assert.deepEqual(
    [...after.order],
    [0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14, 15, 16],
  );
  assert.deepEqual(after.blockTokens.map((b) => b.length), [4, 4, 2, 2, 2, 1]);
  assert.deepEqual([...after.textIndices], [15, 16]);
  const before = tokenOrder(
    geom(1, 3, 5, { poolH: 2, poolW: 2, textTokens: 2, textPosition: "before" }),
  );
  assert.deepEqual(
    [...before.order],
    [0, 1, 2, 3, 7, 8, 4, 5, 9, 10, 6, 11, 12, 13, 14, 15, 16],
  );
  assert.deepEqual([...before.textIndices], [0, 1]);
  assert.equal(before.blockOf[0], -1);
  assert.equal(before.blockOf[16], 5);
});

Deno.test("reference: window order is a permutation with contiguous blocks for every geometry", () => {
  const cases: RefGeometry[] = [
    geom(3, 13, 21),
    geom(2, 30, 52, { textTokens: 130 }),
    geom(2, 5, 7, { textTokens: 5, textPosition: "before" }),
    geom(1, 1, 1),
    geom(4, 16, 32),
    geom(2, 9, 9, { poolH: 3, poolW: 4, textTokens: 1 }),
  ];
  for (const gm of cases) {
    const ord = tokenOrder(gm);
    const n = gm.frames * gm.height * gm.width + gm.textTokens;
    assert.equal(ord.tokens, n);
    assert.equal(
      ord.g,
      gm.frames * Math.ceil(gm.height / gm.poolH) * Math.ceil(gm.width / gm.poolW),
    );
    const seen = new Uint8Array(n);
    for (const t of ord.order) seen[t]++;
    assert.ok(seen.every((c) => c === 1), `order is a permutation for ${JSON.stringify(gm)}`);
    for (let p = 0; p < n; p++) assert.equal(ord.inverse[ord.order[p]], p);
    // Blocks are contiguous runs of window order, in block order, text at its end.
    let p = gm.textPosition === "before" ? gm.textTokens : 0;
    for (let b = 0; b < ord.g; b++) {
      for (const t of ord.blockTokens[b]) {
        assert.equal(ord.inverse[t], p++);
        assert.equal(ord.blockOf[t], b);
      }
      assert.ok(ord.blockTokens[b].length >= 1 && ord.blockTokens[b].length <= gm.poolH * gm.poolW);
    }
    // Block of a raster token re-derived from its coordinates.
    const base = gm.textPosition === "before" ? gm.textTokens : 0;
    const nh = Math.ceil(gm.height / gm.poolH), nw = Math.ceil(gm.width / gm.poolW);
    for (let t = 0; t < n; t++) {
      const v = t - base;
      if (v < 0 || v >= gm.frames * gm.height * gm.width) {
        assert.equal(ord.blockOf[t], -1);
        continue;
      }
      const f = Math.floor(v / (gm.height * gm.width));
      const r = Math.floor(v / gm.width) % gm.height;
      const c = v % gm.width;
      const want = (f * nh + Math.floor(r / gm.poolH)) * nw + Math.floor(c / gm.poolW);
      assert.equal(ord.blockOf[t], want);
    }
  }
});

Deno.test("reference: a partial window averages only its own tokens", () => {
  // 1 frame, 1 row, 3 columns, windows of 1x2: blocks {0,1} and {2}. headDim 1, one head.
  const gm = geom(1, 1, 3, { poolH: 1, poolW: 2 });
  const ord = tokenOrder(gm);
  const dims: Dims = { batch: 1, tokens: 3, heads: 1, headDim: 1, layout: "BSHD" };
  const means = windowMeans([2, 4, 10], dims, ord);
  assert.deepEqual([...means], [3, 10]);
});

Deno.test("reference: window means read through the layout", () => {
  const gm = geom(2, 3, 5, { poolH: 2, poolW: 3, textTokens: 4, textPosition: "before" });
  const ord = tokenOrder(gm);
  const bshd: Dims = { batch: 2, tokens: ord.tokens, heads: 3, headDim: 4, layout: "BSHD" };
  const bhsd: Dims = { ...bshd, layout: "BHSD" };
  const { q } = randomInputs({ ...bshd, dtype: "f32", seed: 7 });
  const transposed = fromBHND(toBHND(q, bshd), bhsd);
  assert.deepEqual(toBHND(transposed, bhsd), toBHND(q, bshd));
  const a = windowMeans(q, bshd, ord), b = windowMeans(transposed, bhsd, ord);
  assert.deepEqual(a, b);
});

Deno.test("reference: selection of a 2x2 and a 3x3 map, by hand", () => {
  // keep 1: threshold 0.7 keeps (0,0); row 1 keeps its maximum (1,1).
  assert.deepEqual([...selectBlocks([0.7, 0.3, 0.4, 0.6], 2, 1).mask], [1, 0, 0, 1]);
  // Ties at the threshold are all kept.
  assert.deepEqual([...selectBlocks([0.5, 0.5, 0.5, 0.5], 2, 1).mask], [1, 1, 1, 1]);
  assert.equal(selectBlocks([0.5, 0.5, 0.5, 0.5], 2, 1).margin, 0);
  // keep 3 of 9: threshold 0.5 (values 0.8, 0.6, 0.5 kept); row 2 adds its maximum 0.4 at j=0.
  const p = [
    [0.8, 0.1, 0.1],
    [0.2, 0.6, 0.2],
    [0.4, 0.1, 0.5],
  ].flat();
  const sel = selectBlocks(p, 3, 3);
  assert.equal(sel.threshold, 0.5);
  assert.deepEqual([...sel.mask], [1, 0, 0, 0, 1, 0, 0, 0, 1]);
  // Largest dropped entry 0.4 against threshold 0.5: margin 0.2; row 2's rival of its max 0.5
  // is 0.4 (margin 0.2); rows 0, 1: 0.1/0.8 -> 0.875, 0.2/0.6 -> 0.667.
  assert.ok(Math.abs(sel.margin - 0.2) < 1e-12);
  // A row whose maximum is below the threshold keeps it.
  const q = [
    [0.9, 0.05, 0.05],
    [0.1, 0.85, 0.05],
    [0.3, 0.3, 0.4],
  ].flat();
  assert.deepEqual([...selectBlocks(q, 3, 2).mask], [1, 0, 0, 0, 1, 0, 0, 0, 1]);
});

Deno.test("reference: sparsity 0 keeps everything; every row keeps a block at any sparsity", () => {
  const rng = new Rng(3);
  for (const g of [1, 2, 5, 12, 32]) {
    const p = Float64Array.from({ length: 2 * g * g }, () => rng.next() + 1e-3);
    assert.equal(keepCount(g, 0), g * g);
    const full = blockMask(p, { batch: 1, heads: 2, g, keep: keepCount(g, 0) });
    assert.ok(full.mask.every((x) => x === 1));
    assert.equal(full.density, 1);
    for (const s of [0.5, 0.9, 0.97, 0.999]) {
      const keep = keepCount(g, s);
      const m = blockMask(p, { batch: 1, heads: 2, g, keep });
      for (let r = 0; r < 2 * g; r++) {
        assert.ok(
          m.mask.subarray(r * g, (r + 1) * g).some((x) => x === 1),
          `row ${r} g=${g} s=${s}`,
        );
      }
      // Random distinct values: the threshold keeps exactly `keep`, row maxima add at most g.
      for (let bh = 0; bh < 2; bh++) {
        let kept = 0;
        for (const x of m.mask.subarray(bh * g * g, (bh + 1) * g * g)) kept += x;
        assert.ok(kept >= keep && kept <= keep + g, `kept ${kept}, keep ${keep}`);
      }
    }
  }
});

Deno.test("reference: the draft map is row-stochastic", () => {
  const gm = geom(2, 13, 21, { textTokens: 5 });
  const inp = videoInputs({
    geometry: gm,
    batch: 2,
    heads: 2,
    headDim: 16,
    layout: "BHSD",
    dtype: "f32",
    seed: 1,
  });
  const plan = draftMaskRef({
    ...inp,
    geometry: gm,
    batch: 2,
    heads: 2,
    headDim: 16,
    layout: "BHSD",
    sparsity: 0.5,
  });
  const g = plan.order.g;
  for (let r = 0; r < 2 * 2 * g; r++) {
    let z = 0;
    for (let j = 0; j < g; j++) z += plan.p[r * g + j];
    assert.ok(Math.abs(z - 1) < 1e-12);
  }
  // The structured inputs spread P: the largest entry is far above the smallest.
  let lo = Infinity, hi = 0;
  for (const x of plan.p) {
    lo = Math.min(lo, x);
    hi = Math.max(hi, x);
  }
  assert.ok(hi / lo > 5, `P spread ${hi / lo}`);
  assert.ok(lo > 1e-20, `P far from underflow: min ${lo}`);
  // Batch elements draw different fields, hence different masks.
  const half = plan.mask.mask.length / 2;
  assert.notDeepEqual(plan.mask.mask.subarray(0, half), plan.mask.mask.subarray(half));
});

Deno.test("reference: draft map of a hand example", () => {
  // g = 2, headDim 1, scale 1: Qd = [1, 0], Kd = [ln 3, 0]. Row 0: softmax([ln 3, 0]) = [3/4, 1/4].
  const p = draftMap(new Float64Array([1, 0]), new Float64Array([Math.log(3), 0]), {
    batch: 1,
    heads: 1,
    g: 2,
    headDim: 1,
    scale: 1,
  });
  assert.ok(maxAbsErr(p, [0.75, 0.25, 0.5, 0.5]).err < 1e-15);
});

Deno.test("reference: attention of a hand example", () => {
  // One head, headDim 1, scale 1. q0 = 0 -> uniform weights; q1 = ln 2 with k = [1, 0]
  // -> weights [2/3, 1/3].
  const dims: Dims = { batch: 1, tokens: 2, heads: 1, headDim: 1, layout: "BSHD" };
  const out = attentionF64({ q: [0, Math.log(2)], k: [1, 0], v: [3, 6], dims, scale: 1 });
  assert.ok(Math.abs(out[0] - 4.5) < 1e-14);
  assert.ok(Math.abs(out[1] - 4) < 1e-14);
  // A query without keys gives 0, not NaN.
  const none = attentionF64({
    q: [1, 1],
    k: [1, 1],
    v: [1, 1],
    dims,
    scale: 1,
    keys: () => () => new Int32Array(0),
  });
  assert.deepEqual([...none], [0, 0]);
});

Deno.test("reference: masked keys match the token-level rule, text never masked", () => {
  const gm = geom(2, 5, 7, { poolH: 2, poolW: 4, textTokens: 3, textPosition: "before" });
  const ord = tokenOrder(gm);
  const rng = new Rng(11);
  const heads = 2;
  const mask = Uint8Array.from(
    { length: 2 * heads * ord.g * ord.g },
    () => (rng.next() < 0.4 ? 1 : 0),
  );
  const keys = maskedKeys(ord, mask, heads);
  for (let b = 0; b < 2; b++) {
    for (let h = 0; h < heads; h++) {
      const of = keys(b, h);
      for (let i = 0; i < ord.tokens; i++) {
        const got = [...of(i)].sort((x, y) => x - y);
        const want: number[] = [];
        for (let j = 0; j < ord.tokens; j++) {
          if (tokenAllowed(ord, mask, { b, h, heads }, i, j)) want.push(j);
        }
        assert.deepEqual(got, want);
        for (const t of ord.textIndices) assert.ok(got.includes(t));
        if (ord.blockOf[i] < 0) assert.equal(got.length, ord.tokens);
      }
    }
  }
});

Deno.test("reference: masked attention equals a brute-force N x N masked softmax", () => {
  const gm = geom(1, 6, 10, { poolH: 4, poolW: 4, textTokens: 5 });
  const ord = tokenOrder(gm);
  const dims: Dims = { batch: 1, tokens: ord.tokens, heads: 1, headDim: 4, layout: "BSHD" };
  const inp = randomInputs({ ...dims, dtype: "f32", seed: 5 });
  const mask = Uint8Array.from({ length: ord.g * ord.g }, (_, i) => (i % 3 === 0 ? 1 : 0));
  const got = attentionF64({ ...inp, dims, scale: 0.5, keys: maskedKeys(ord, mask, 1) });
  const n = ord.tokens;
  for (let i = 0; i < n; i++) {
    const w = new Float64Array(n);
    for (let j = 0; j < n; j++) {
      if (!tokenAllowed(ord, mask, { b: 0, h: 0, heads: 1 }, i, j)) continue;
      let s = 0;
      for (let d = 0; d < 4; d++) s += inp.q[i * 4 + d] * inp.k[j * 4 + d];
      w[j] = Math.exp(0.5 * s);
    }
    const z = w.reduce((a, b) => a + b, 0);
    for (let d = 0; d < 4; d++) {
      let o = 0;
      for (let j = 0; j < n; j++) o += (w[j] / z) * inp.v[j * 4 + d];
      assert.ok(Math.abs(o - got[i * 4 + d]) < 1e-12);
    }
  }
});

Deno.test("reference: sparsity 0 draft attention is dense attention", () => {
  const gm = geom(3, 13, 21, { textTokens: 5 });
  const ord = tokenOrder(gm);
  const dims: Dims = { batch: 1, tokens: ord.tokens, heads: 1, headDim: 8, layout: "BHSD" };
  const inp = videoInputs({ geometry: gm, ...dims, dtype: "f32", seed: 2 });
  const draft = draftAttentionRef({ ...inp, geometry: gm, ...dims, sparsity: 0 });
  assert.ok(draft.mask.mask.every((x) => x === 1));
  const dense = attentionF64({
    ...inp,
    dims,
    scale: 1 / Math.sqrt(8),
    keys: denseKeys(ord.tokens),
  });
  assert.ok(maxAbsErr(draft.out, dense).err < 1e-12);
});

Deno.test("reference: layouts give the same numbers", () => {
  const bshd: Dims = { batch: 2, tokens: 9, heads: 3, headDim: 4, layout: "BSHD" };
  const bhsd: Dims = { ...bshd, layout: "BHSD" };
  const inp = randomInputs({ ...bshd, dtype: "f32", seed: 9 });
  const t = (x: ArrayLike<number>) => fromBHND(toBHND(x, bshd), bhsd);
  const a = attentionF64({ ...inp, dims: bshd, scale: 0.5 });
  const b = attentionF64({ q: t(inp.q), k: t(inp.k), v: t(inp.v), dims: bhsd, scale: 0.5 });
  assert.ok(maxAbsErr(t(a), b).err < 1e-15);
});

Deno.test("reference: naive kernels are close to float64 but not exact (a usable yardstick)", () => {
  const dims: Dims = { batch: 1, tokens: 65, heads: 2, headDim: 32, layout: "BSHD" };
  for (const dtype of ["f32", "f16"] as const) {
    const inp = randomInputs({ ...dims, dtype, seed: 4 });
    const ref = attentionF64({ ...inp, dims, scale: 1 / Math.sqrt(32) });
    const naive = attentionNaive({ ...inp, dims, scale: 1 / Math.sqrt(32), precision: dtype });
    const { err } = maxAbsErr(naive, ref);
    const bound = dtype === "f32" ? 1e-5 : 1e-2;
    assert.ok(err > 0 && err < bound, `${dtype} naive error ${err}`);
    assert.ok(relL2(naive, ref) < bound);
  }
});

Deno.test("reference: Rng is deterministic and roughly standard normal", () => {
  const a = new Rng(42), b = new Rng(42);
  for (let i = 0; i < 10; i++) assert.equal(a.next(), b.next());
  const r = new Rng(1);
  let s = 0, s2 = 0;
  const n = 20000;
  for (let i = 0; i < n; i++) {
    const x = r.normal();
    s += x;
    s2 += x * x;
  }
  assert.ok(Math.abs(s / n) < 0.03);
  assert.ok(Math.abs(s2 / n - 1) < 0.05);
});

Deno.test("reference: comparison helpers flag NaN", () => {
  assert.ok(Number.isNaN(maxAbsErr([1, NaN], [1, 2]).err));
  assert.deepEqual(maxAbsErr([1, 2.5], [1, 2]), { err: 0.5, index: 1 });
  assert.throws(
    () => assertFinite([0, Infinity, NaN], "x"),
    /2 non-finite values, first Infinity at index 1/,
  );
  assertFinite(new Float32Array(4), "zeros");
});
