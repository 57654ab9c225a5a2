import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { denseStats, effectiveKeys, oracleRecall } from "../src/metrics.ts";
import { keepCount } from "../src/validate.ts";
import {
  CONCENTRATION_LEVELS,
  DEFAULT_CONCENTRATION,
  DEFAULT_GEOMETRY,
  generateWorkload,
  PHOTO_GEOMETRIES,
  PHOTO_REGIMES,
  ropeSections,
  type WorkloadOptions,
} from "../src/workload.ts";

const SMALL: WorkloadOptions = { frames: 2, height: 9, width: 20, heads: 2, headDim: 16 };

function same(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

Deno.test("workload: deterministic from the seed, different across seeds", () => {
  const a = generateWorkload({ ...SMALL, seed: 7 });
  const b = generateWorkload({ ...SMALL, seed: 7 });
  const c = generateWorkload({ ...SMALL, seed: 8 });
  assert.ok(same(a.q, b.q) && same(a.k, b.k) && same(a.v, b.v) && same(a.scene, b.scene));
  assert.ok(!same(a.q, c.q) && !same(a.v, c.v) && !same(a.scene, c.scene));
  assert.equal(a.tokens, 2 * 9 * 20);
  assert.equal(a.q.length, a.tokens * 2 * 16);
  for (const x of [a.q, a.k, a.v]) assert.ok(x.every(Number.isFinite));
});

Deno.test("workload: BHSD and f16 hold the same values as BSHD f32", () => {
  const opts = { ...SMALL, textTokens: 5, seed: 3 };
  const a = generateWorkload(opts);
  const t = generateWorkload({ ...opts, layout: "BHSD" });
  const h = generateWorkload({ ...opts, dtype: "f16" });
  assert.ok(a.q instanceof Float32Array && t.q instanceof Float32Array);
  assert.ok(h.q instanceof Float16Array && h.k instanceof Float16Array);
  const { tokens: N, heads: H, headDim: D } = a;
  for (const f of ["q", "k", "v"] as const) {
    for (let n = 0; n < N; n++) {
      for (let hh = 0; hh < H; hh++) {
        for (let d = 0; d < D; d++) {
          const x = a[f][(n * H + hh) * D + d];
          assert.equal(t[f][(hh * N + n) * D + d], x);
          // f64 -> f16 directly vs f64 -> f32 -> f16: at most one f16 rounding step apart.
          const y = h[f][(n * H + hh) * D + d];
          assert.ok(Math.abs(y - x) <= Math.abs(x) * 2 ** -10 + 2 ** -24, `${f} ${y} vs ${x}`);
        }
      }
    }
  }
});

Deno.test("workload: text before/after moves the text, batch element 0 matches batch 1", () => {
  const T = 7;
  const after = generateWorkload({ ...SMALL, textTokens: T, seed: 5 });
  const before = generateWorkload({ ...SMALL, textTokens: T, textPosition: "before", seed: 5 });
  const row = after.heads * after.headDim;
  const video = after.tokens - T;
  assert.ok(same(after.q.subarray(0, video * row), before.q.subarray(T * row)));
  assert.ok(same(after.k.subarray(video * row), before.k.subarray(0, T * row)));
  const two = generateWorkload({ ...SMALL, textTokens: T, seed: 5, batch: 2 });
  const n = after.q.length;
  assert.ok(same(two.q.subarray(0, n), after.q) && same(two.v.subarray(0, n), after.v));
  assert.ok(!same(two.q.subarray(n), after.q), "batch elements are different scenes");
});

Deno.test("workload: concentration is the logit of an aligned pair at the default scale", () => {
  const w = generateWorkload({ ...SMALL, textTokens: 3, concentration: 10, seed: 2 });
  const { headDim: D, heads: H } = w;
  for (const t of [0, 17, 200, w.tokens - 1]) {
    for (let h = 0; h < H; h++) {
      let qq = 0, kk = 0;
      for (let d = 0; d < D; d++) {
        qq += w.q[(t * H + h) * D + d] ** 2;
        kk += w.k[(t * H + h) * D + d] ** 2;
      }
      // |q| |k| * scale = concentration (RMS norm, then the gain; RoPE keeps norms).
      assert.ok(Math.abs(Math.sqrt(qq * kk) * w.scale - 10) < 1e-3, `token ${t} head ${h}`);
    }
  }
  assert.equal(generateWorkload({ ...SMALL, concentration: "sharp" }).concentration, 32);
  assert.equal(generateWorkload(SMALL).concentration, DEFAULT_CONCENTRATION);
});

Deno.test("workload: sharper concentration levels give fewer effective keys per query", () => {
  const geo = { frames: 3, height: 16, width: 32, heads: 4, headDim: 32, seed: 1 };
  const keys = (["flat", "moderate", "sharp"] as const).map((level) => {
    const w = generateWorkload({ ...geo, concentration: level });
    return effectiveKeys(w.q, w.k, w, { samples: 64 });
  });
  assert.ok(keys[0] > keys[1] && keys[1] > keys[2], `effective keys ${keys.join(", ")}`);
  assert.ok(keys[0] < 1536 && keys[2] >= 1, `in range: ${keys.join(", ")}`);
  assert.ok(
    Object.values(CONCENTRATION_LEVELS).every((c, i, a) => i === 0 || c > a[i - 1]),
    "levels increase",
  );
});

Deno.test("workload: at the default, the oracle keeps >= 60% of the mass at sparsity 0.9", () => {
  // The demo's default geometry and concentration: sparse attention must make sense there.
  const w = generateWorkload({ ...DEFAULT_GEOMETRY, seed: 1 });
  const stats = denseStats(w.q, w.k, w);
  const keep = keepCount(stats.g, 0.9);
  const oracle = oracleRecall(stats, keep);
  assert.ok(oracle.mean >= 0.6, `oracle recall ${oracle.mean}`);
  // Not trivially sharp either: the selection has to work for it.
  assert.ok(oracle.mean < 0.95, `oracle recall ${oracle.mean}`);
});

Deno.test("workload: photo regimes give ~4,000 / ~300 / ~50 effective keys, even and ragged", () => {
  const want = { flat: [3000, 4600], moderate: [200, 450], sharp: [30, 80] } as const;
  for (const [shape, geo] of Object.entries(PHOTO_GEOMETRIES)) {
    for (const regime of ["flat", "moderate", "sharp"] as const) {
      const w = generateWorkload({
        ...geo,
        seed: 11,
        concentration: PHOTO_REGIMES[regime],
        scene: "photo",
      });
      const e = effectiveKeys(w.q, w.k, w, { samples: 32 });
      const [lo, hi] = want[regime];
      assert.ok(e >= lo && e <= hi, `${shape} ${regime}: ${e} effective keys`);
    }
  }
  // Not the shapes scene, deterministic, and it moves: frames differ.
  const a = generateWorkload({ ...SMALL, scene: "photo", seed: 4 });
  const b = generateWorkload({ ...SMALL, scene: "photo", seed: 4 });
  const c = generateWorkload({ ...SMALL, seed: 4 });
  assert.ok(same(a.scene, b.scene) && same(a.q, b.q) && !same(a.scene, c.scene));
  assert.equal(
    generateWorkload({ ...SMALL, scene: "photo", concentration: "sharp" }).concentration,
    PHOTO_REGIMES.sharp,
  );
  const frame = a.scene.length / 2;
  assert.ok(!same(a.scene.subarray(0, frame), a.scene.subarray(frame)));
  assert.throws(
    () => generateWorkload({ ...SMALL, scene: "film" } as unknown as WorkloadOptions),
    (e: unknown) => e instanceof DraftAttentionError && e.field === "scene",
  );
});

Deno.test("workload: RoPE sections split headDim as Wan does", () => {
  assert.deepEqual(ropeSections(128), [44, 42, 42]);
  assert.deepEqual(ropeSections(64), [24, 20, 20]);
  assert.deepEqual(ropeSections(4), [4, 0, 0]);
});

Deno.test("workload: bad options are typed errors naming the field", () => {
  const cases: [Record<string, unknown>, string, string][] = [
    [{ headDim: 30 }, "headDim", "UNSUPPORTED"],
    [{ frames: 0 }, "frames", "INVALID_OPTION"],
    [{ concentration: "hot" }, "concentration", "INVALID_OPTION"],
    [{ concentration: -1 }, "concentration", "INVALID_OPTION"],
    [{ layout: "NCHW" }, "layout", "INVALID_OPTION"],
    [{ dtype: "bf16" }, "dtype", "INVALID_OPTION"],
    [{ seed: 1.5 }, "seed", "INVALID_OPTION"],
  ];
  for (const [patch, field, code] of cases) {
    assert.throws(
      () => generateWorkload({ ...SMALL, ...patch } as unknown as WorkloadOptions),
      (e: unknown) => e instanceof DraftAttentionError && e.field === field && e.code === code,
      field,
    );
  }
});
