// The WebAssembly backend against a small float64 computation written here (the full
// conformance suite lives elsewhere). Runs the debug build of asm/ so its assertions are on.
import assert from "node:assert/strict";
import "./_asm_debug.ts";
import { DraftAttentionError } from "../src/errors.ts";
import { buildPlan } from "../src/plan.ts";
import type { DenseSpec, DraftSpec, DType, Layout, TensorArray } from "../src/types.ts";
import { keepCount, maskConfig } from "../src/validate.ts";
import { createWasmBackend } from "../src/wasm/backend.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function tensor(spec: DenseSpec, seed: number, amp: number): TensorArray {
  const r = rng(seed);
  const n = spec.batch * spec.tokens * spec.heads * spec.headDim;
  const a = spec.dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * amp;
  return a;
}

/** Element (b, t, h, d) offset for the spec's layout. */
function index(spec: DenseSpec, b: number, t: number, h: number, d: number): number {
  const { tokens: N, heads: H, headDim: D } = spec;
  return spec.layout === "BSHD" ? ((b * N + t) * H + h) * D + d : ((b * H + h) * N + t) * D + d;
}

/** Rows of one (b, h) as float64 [tokens][headDim]. */
function rows(spec: DenseSpec, x: TensorArray, b: number, h: number): Float64Array {
  const { tokens: N, headDim: D } = spec;
  const out = new Float64Array(N * D);
  for (let t = 0; t < N; t++) {
    for (let d = 0; d < D; d++) out[t * D + d] = x[index(spec, b, t, h, d)];
  }
  return out;
}

/**
 * Float64 attention; `allowed(b, h, i, j)` says whether query token i sees key token j
 * (raster indices).
 */
function reference(
  spec: DenseSpec,
  q: TensorArray,
  k: TensorArray,
  v: TensorArray,
  allowed: (b: number, h: number, i: number, j: number) => boolean,
): Float64Array {
  const { batch: B, tokens: N, heads: H, headDim: D, scale } = spec;
  const out = new Float64Array(B * N * H * D);
  const s = new Float64Array(N);
  const o = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qr = rows(spec, q, b, h);
      const kr = rows(spec, k, b, h);
      const vr = rows(spec, v, b, h);
      for (let i = 0; i < N; i++) {
        let m = -Infinity;
        for (let j = 0; j < N; j++) {
          if (!allowed(b, h, i, j)) {
            s[j] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qr[i * D + d] * kr[j * D + d];
          s[j] = dot * scale;
          m = Math.max(m, s[j]);
        }
        let z = 0;
        o.fill(0);
        for (let j = 0; j < N; j++) {
          if (s[j] === -Infinity) continue;
          const e = Math.exp(s[j] - m);
          z += e;
          for (let d = 0; d < D; d++) o[d] += e * vr[j * D + d];
        }
        for (let d = 0; d < D; d++) out[index(spec, b, i, h, d)] = z > 0 ? o[d] / z : 0;
      }
    }
  }
  return out;
}

function assertClose(got: TensorArray, want: Float64Array, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    if (Number.isNaN(got[i])) assert.fail(`${what}: NaN at ${i}`);
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  assert.ok(
    worst <= tol,
    `${what}: max error ${worst} at ${at} (got ${got[at]}, want ${want[at]})`,
  );
}

const TOKENS = [1, 63, 65, 97, 129];
const HEAD_DIMS = [4, 32, 64, 128];
const LAYOUTS: Layout[] = ["BSHD", "BHSD"];
const DTYPES: DType[] = ["f32", "f16"];
const TOL: Record<DType, number> = { f32: 2e-5, f16: 2e-3 };

Deno.test("wasm dense attention matches float64", async () => {
  const backend = createWasmBackend("test", { build: "debug" });
  let seed = 1;
  for (const tokens of TOKENS) {
    for (const headDim of HEAD_DIMS) {
      for (const layout of LAYOUTS) {
        for (const dtype of DTYPES) {
          const spec: DenseSpec = {
            batch: tokens < 64 ? 2 : 1,
            tokens,
            heads: 2,
            headDim,
            layout,
            dtype,
            scale: 1 / Math.sqrt(headDim),
          };
          const q = tensor(spec, seed++, 2);
          const k = tensor(spec, seed++, 2);
          const v = tensor(spec, seed++, 1);
          const op = backend.dense(spec);
          const out = await op.run(q, k, v);
          assert.ok(out instanceof (dtype === "f16" ? Float16Array : Float32Array));
          const want = reference(spec, q, k, v, () => true);
          assertClose(out, want, TOL[dtype], `dense ${tokens}x${headDim} ${layout} ${dtype}`);
          op.dispose();
        }
      }
    }
  }
  backend.dispose();
});

Deno.test("wasm dense attention at 1025 tokens (several query and key tiles)", async () => {
  const backend = createWasmBackend("test", { build: "debug" });
  for (const [layout, dtype] of [["BSHD", "f32"], ["BHSD", "f16"]] as const) {
    const spec: DenseSpec = {
      batch: 1,
      tokens: 1025,
      heads: 2,
      headDim: 36,
      layout,
      dtype,
      scale: 0.2,
    };
    const q = tensor(spec, 11, 3);
    const k = tensor(spec, 12, 3);
    const v = tensor(spec, 13, 1);
    const out = await backend.dense(spec).run(q, k, v);
    assertClose(out, reference(spec, q, k, v, () => true), TOL[dtype], `dense 1025 ${layout}`);
  }
  backend.dispose();
});

interface Case {
  frames: number;
  height: number;
  width: number;
  textTokens: number;
  textPosition: "after" | "before";
  pool: [number, number];
}

const CASES: Case[] = [
  { frames: 1, height: 1, width: 1, textTokens: 0, textPosition: "after", pool: [8, 16] },
  { frames: 2, height: 5, width: 6, textTokens: 3, textPosition: "after", pool: [2, 4] },
  { frames: 1, height: 8, width: 8, textTokens: 1, textPosition: "before", pool: [3, 3] },
  { frames: 1, height: 6, width: 16, textTokens: 1, textPosition: "after", pool: [4, 4] },
  { frames: 1, height: 8, width: 16, textTokens: 1, textPosition: "before", pool: [2, 2] },
  { frames: 3, height: 5, width: 7, textTokens: 24, textPosition: "after", pool: [2, 3] },
  { frames: 3, height: 13, width: 21, textTokens: 130, textPosition: "before", pool: [8, 16] },
];

/** Window (draft token) of a raster token, or -1 for text; written from the definition. */
function windowOf(c: Case, t: number): number {
  const video = c.frames * c.height * c.width;
  const v = c.textPosition === "before" ? t - c.textTokens : t;
  if (v < 0 || v >= video) return -1;
  const f = Math.floor(v / (c.height * c.width));
  const r = Math.floor(v / c.width) % c.height;
  const col = v % c.width;
  const nh = Math.ceil(c.height / c.pool[0]);
  const nw = Math.ceil(c.width / c.pool[1]);
  return (f * nh + Math.floor(r / c.pool[0])) * nw + Math.floor(col / c.pool[1]);
}

/** Float64 draft map P for (b, h). */
function draftMap(spec: DraftSpec, c: Case, q: TensorArray, k: TensorArray, b: number, h: number) {
  const nh = Math.ceil(c.height / c.pool[0]);
  const nw = Math.ceil(c.width / c.pool[1]);
  const g = c.frames * nh * nw;
  const D = spec.headDim;
  const qd = new Float64Array(g * D);
  const kd = new Float64Array(g * D);
  const n = new Float64Array(g);
  for (let t = 0; t < spec.tokens; t++) {
    const w = windowOf(c, t);
    if (w < 0) continue;
    n[w]++;
    for (let d = 0; d < D; d++) {
      qd[w * D + d] += q[index(spec, b, t, h, d)];
      kd[w * D + d] += k[index(spec, b, t, h, d)];
    }
  }
  const p = new Float64Array(g * g);
  for (let i = 0; i < g; i++) {
    let m = -Infinity;
    for (let j = 0; j < g; j++) {
      let dot = 0;
      for (let d = 0; d < D; d++) dot += (qd[i * D + d] / n[i]) * (kd[j * D + d] / n[j]);
      p[i * g + j] = dot * spec.scale;
      m = Math.max(m, p[i * g + j]);
    }
    let z = 0;
    for (let j = 0; j < g; j++) z += p[i * g + j] = Math.exp(p[i * g + j] - m);
    for (let j = 0; j < g; j++) p[i * g + j] /= z;
  }
  return { g, p };
}

Deno.test("wasm draft attention matches float64 with its mask; the mask follows the rule", async () => {
  const backend = createWasmBackend("test", { build: "debug" });
  let seed = 100;
  for (const c of CASES) {
    for (const sparsity of [0, 0.5, 0.9]) {
      for (
        const [headDim, layout, dtype] of [[32, "BSHD", "f32"], [64, "BHSD", "f16"], [
          4,
          "BHSD",
          "f32",
        ], [128, "BSHD", "f32"]] as const
      ) {
        // The 949-token case once: its float64 reference dominates the run time.
        if (c.height * c.width * c.frames > 500 && headDim !== 32) continue;
        const plan = buildPlan({
          frames: c.frames,
          height: c.height,
          width: c.width,
          textTokens: c.textTokens,
          textPosition: c.textPosition,
          poolH: c.pool[0],
          poolW: c.pool[1],
        });
        const spec: DraftSpec = {
          batch: 2,
          tokens: plan.tokens,
          heads: 2,
          headDim,
          layout,
          dtype,
          scale: 1 / Math.sqrt(headDim),
          frames: c.frames,
          height: c.height,
          width: c.width,
          textTokens: c.textTokens,
          textPosition: c.textPosition,
          poolH: c.pool[0],
          poolW: c.pool[1],
          sparsity,
          policy: "percentile",
          keep: keepCount(plan.g, sparsity),
          mask: maskConfig(
            { policy: "percentile", sparsity, keep: keepCount(plan.g, sparsity) },
            plan.g,
          ),
        };
        const q = tensor(spec, seed++, 3);
        const k = tensor(spec, seed++, 3);
        const v = tensor(spec, seed++, 1);
        const op = backend.draft(spec, plan);
        const out = await op.run(q, k, v);
        const { g, mask, density } = await op.lastMask();
        assert.equal(g, plan.g);
        assert.equal(mask.length, spec.batch * spec.heads * g * g);
        const what = `draft ${JSON.stringify(c)} s=${sparsity} D=${headDim} ${layout} ${dtype}`;
        // The mask follows the rule on a float64 P, except within float rounding of the edge.
        let kept = 0;
        for (let b = 0; b < spec.batch; b++) {
          for (let h = 0; h < spec.heads; h++) {
            const { p } = draftMap(spec, c, q, k, b, h);
            const sorted = Array.from(p).sort((x, y) => y - x);
            const t = sorted[spec.keep - 1];
            for (let i = 0; i < g; i++) {
              let rowMax = 0;
              for (let j = 0; j < g; j++) rowMax = Math.max(rowMax, p[i * g + j]);
              for (let j = 0; j < g; j++) {
                const x = p[i * g + j];
                const want = x >= t || x === rowMax;
                const got = mask[((b * spec.heads + h) * g + i) * g + j] === 1;
                kept += got ? 1 : 0;
                const edge = Math.abs(x - t) <= 1e-5 * t || Math.abs(x - rowMax) <= 1e-5 * rowMax;
                if (got !== want && !edge) assert.fail(`${what}: mask (${b},${h},${i},${j})`);
              }
            }
          }
        }
        assert.equal(density, kept / mask.length);
        if (sparsity === 0) assert.equal(kept, mask.length);
        const want = reference(spec, q, k, v, (b, h, i, j) => {
          const wi = windowOf(c, i);
          const wj = windowOf(c, j);
          if (wi < 0 || wj < 0) return true;
          return mask[((b * spec.heads + h) * g + wi) * g + wj] === 1;
        });
        assertClose(out, want, TOL[dtype], what);
        op.dispose();
      }
    }
  }
  backend.dispose();
});

Deno.test("wasm backend: info, dispose, TOO_LARGE", async () => {
  const backend = createWasmBackend("because", { threads: 1 });
  assert.deepEqual(backend.info(), {
    backend: "wasm",
    adapter: "WebAssembly SIMD",
    reason: "because",
    features: ["simd", "relaxed-simd"],
    threads: 1,
  });
  const spec: DenseSpec = {
    batch: 1,
    tokens: 5,
    heads: 1,
    headDim: 8,
    layout: "BSHD",
    dtype: "f32",
    scale: 0.3,
  };
  const op = backend.dense(spec);
  const x = tensor(spec, 7, 1);
  await op.run(x, x, x);
  op.dispose();
  await assert.rejects(
    op.run(x, x, x),
    (e) => e instanceof DraftAttentionError && e.code === "DISPOSED" && e.field === "op",
  );
  // 2^22 tokens x 256 dims: 4 GiB per tensor even one head at a time. Rejected before any
  // input is read or memory allocated.
  const big = backend.dense({ ...spec, tokens: 2 ** 22, heads: 2, headDim: 256 });
  const tiny = new Float32Array(0);
  await assert.rejects(
    big.run(tiny, tiny, tiny),
    (e) => e instanceof DraftAttentionError && e.code === "TOO_LARGE" && e.field === "tokens",
  );
  backend.dispose();
  await assert.rejects(
    op.run(x, x, x),
    (e) => e instanceof DraftAttentionError && e.code === "DISPOSED",
  );
});

Deno.test("wasm backend stages one head at a time when a batch element does not fit", async () => {
  const geometry = { frames: 2, height: 5, width: 6, textTokens: 3 } as const;
  const plan = buildPlan({ ...geometry, textPosition: "before", poolH: 2, poolW: 4 });
  for (const [layout, dtype] of [["BSHD", "f16"], ["BHSD", "f32"]] as const) {
    const spec: DraftSpec = {
      batch: 2,
      tokens: plan.tokens,
      heads: 3,
      headDim: 32,
      layout,
      dtype,
      scale: 0.2,
      ...geometry,
      textPosition: "before",
      poolH: 2,
      poolW: 4,
      sparsity: 0.6,
      policy: "percentile",
      keep: keepCount(plan.g, 0.6),
      mask: maskConfig(
        { policy: "percentile", sparsity: 0.6, keep: keepCount(plan.g, 0.6) },
        plan.g,
      ),
    };
    const q = tensor(spec, 21, 3);
    const k = tensor(spec, 22, 3);
    const v = tensor(spec, 23, 1);
    const roomy = createWasmBackend("test", { build: "debug" });
    // A run staged per batch element takes ~161 kB here, per head ~96 kB.
    const tight = createWasmBackend("test", { build: "debug", memoryLimit: 120000 });
    const a = roomy.draft(spec, plan);
    const b = tight.draft(spec, plan);
    assert.deepEqual(await b.run(q, k, v), await a.run(q, k, v));
    assert.deepEqual(await b.lastMask(), await a.lastMask());
    const dense = tight.dense(spec);
    assert.deepEqual(await dense.run(q, k, v), await roomy.dense(spec).run(q, k, v));
    const tooTight = createWasmBackend("test", { memoryLimit: 50000 });
    await assert.rejects(
      tooTight.draft(spec, plan).run(q, k, v),
      (e) => e instanceof DraftAttentionError && e.code === "TOO_LARGE",
    );
    for (const be of [roomy, tight, tooTight]) be.dispose();
  }
});
