/**
 * The conformance suite: ONE list of cases (test/_cases.ts) and ONE tolerance rule, run through
 * the public API against every backend. WebAssembly always runs; WebGPU runs on whatever adapter
 * Deno finds (llvmpipe here), twice: with the adapter's limits and with WebGPU's default limits
 * (the small-GPU kernel variants). A missing adapter fails under CI=true and fails elsewhere unless
 * DRAFTATTN_SKIP_GPU=1, in which case the tests are listed as ignored with the reason.
 *
 * Per case and backend: outputs against the float64 reference (max error <= 2 x naive kernel's
 * + floor), no NaN, the right typed array; for draft cases the block mask exactly equal to the
 * reference's, every query block with a key, batch elements with their own masks, sparsity 0
 * equal to dense attention. Across backends: identical masks for identical inputs.
 *
 * Also here, because it is the other half of "both backends compute the same mask": the shared
 * AssemblyScript planner (src/plan.ts) against the reference's token order and selection.
 */
import assert from "node:assert/strict";
import { type DraftAttentionOp, openRuntime, type Runtime, type RuntimeOptions } from "../mod.ts";
import { buildPlan, maskToSchedule, selectMask } from "../src/plan.ts";
import type { DType, MaskResult, TensorArray } from "../src/types.ts";
import { TEXT_TILE } from "../src/validate.ts";
import { forceAsmSimd } from "../src/_asm.ts";
import {
  type Availability,
  DENSE_CASES,
  denseOptions,
  DRAFT_CASES,
  type DraftCase,
  type DraftExpected,
  draftOptions,
  dumpFailure,
  type Expected,
  geometryOf,
  gpuMissing,
  MASK_MARGIN,
  prepareDense,
  prepareDraft,
  reasonOf,
  tolerance,
} from "./_cases.ts";
import {
  coordsOf,
  type Dims,
  keepCount,
  maxAbsErr,
  type RefGeometry,
  relL2,
  Rng,
  selectBlocks,
  tokenOrder,
} from "./reference.ts";

/**
 * The configurations every case runs on: WebAssembly, WebGPU with the adapter's limits, and
 * WebGPU with WebGPU's default limits (16 KiB workgroup memory, 256 invocations), which makes
 * the backend pick its small-GPU kernel variants.
 */
const CONFIGS = {
  wasm: { backend: "wasm" },
  // The plain-SIMD build, which engines without relaxed SIMD load (forced by a test hook).
  "wasm-plain-simd": { backend: "wasm" },
  webgpu: { backend: "webgpu" },
  "webgpu-default-limits": { backend: "webgpu", limits: "default" },
} as const satisfies Record<string, RuntimeOptions>;
type Name = keyof typeof CONFIGS;
const BACKENDS = Object.keys(CONFIGS) as Name[];

const runtimes = new Map<Name, Runtime>();
const availability = new Map<Name, Availability>();

for (const name of BACKENDS) {
  const opts = CONFIGS[name];
  // The WebAssembly backend fixes its SIMD level when it is made, inside openRuntime.
  forceAsmSimd(name === "wasm-plain-simd" ? "plain" : undefined);
  try {
    const rt = await openRuntime(opts);
    if (rt.backend !== opts.backend) {
      availability.set(name, { failure: `asked for ${opts.backend}, got ${rt.backend}` });
      rt.dispose();
    } else {
      runtimes.set(name, rt);
      availability.set(name, {});
    }
  } catch (e) {
    availability.set(
      name,
      opts.backend === "webgpu" ? gpuMissing(reasonOf(e)) : { failure: reasonOf(e) },
    );
  } finally {
    forceAsmSimd(undefined);
  }
}

/** One line per checked output: error against the reference next to the naive kernel's. */
const summary: string[] = [];

/** Masks per "case / run" per backend, for the cross-backend comparison. */
const masks = new Map<string, Map<Name, Uint8Array>>();

function backendTest(name: Name, title: string, fn: (rt: Runtime) => Promise<void>): void {
  const a = availability.get(name)!;
  const why = a.skip ?? (a.failure ? `${name} unavailable, see "${name}: backend opens"` : "");
  Deno.test({
    name: `${name}: ${title}${why ? ` [skipped: ${why}]` : ""}`,
    ignore: why !== "",
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => fn(runtimes.get(name)!),
  });
}

for (const name of BACKENDS) {
  const a = availability.get(name)!;
  Deno.test({
    name: `${name}: backend opens${a.skip ? ` [skipped: ${a.skip}]` : ""}`,
    ignore: a.skip !== undefined,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => {
      if (a.failure) throw new Error(a.failure);
      const info = runtimes.get(name)!.describe();
      assert.equal(info.backend, CONFIGS[name].backend);
      if (name === "wasm-plain-simd") assert.ok(!info.features.includes("relaxed-simd"));
      console.log(
        `  ${name}: ${info.adapter}; ${info.reason}; features ${info.features.join(", ")}`,
      );
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

function arrayTypeOf(dtype: DType) {
  return dtype === "f16" ? Float16Array : Float32Array;
}

/** Output checks; returns problems instead of throwing so that every stage gets reported. */
function checkOutput(
  label: string,
  out: TensorArray,
  exp: Expected,
  dims: Dims,
  dtype: DType,
): string[] {
  const want = arrayTypeOf(dtype);
  if (!(out instanceof want)) {
    return [`output: expected a ${want.name}, got ${out?.constructor?.name}`];
  }
  if (out.length !== exp.ref.length) {
    return [`output: length ${out.length}, expected ${exp.ref.length}`];
  }
  let nan = 0;
  let firstNaN = -1;
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) {
      nan++;
      if (firstNaN < 0) firstNaN = i;
    }
  }
  if (nan) {
    return [
      `output: ${nan} non-finite values, first ${out[firstNaN]} at ${coordsOf(firstNaN, dims)}`,
    ];
  }
  const { err, index } = maxAbsErr(out, exp.ref);
  summary.push(
    `${label}: max err ${err.toExponential(2)}, naive ${exp.naiveErr.toExponential(2)}, ` +
      `tol ${exp.tol.toExponential(2)}${err <= exp.tol ? "" : "  FAIL"}`,
  );
  if (err <= exp.tol) return [];
  const path = dumpFailure(label, { ref: exp.ref, out, diff: exp.ref.map((r, i) => out[i] - r) });
  return [
    `output: max |out - ref| = ${err.toExponential(3)} > tol ${exp.tol.toExponential(3)} ` +
    `(naive ${dtype} kernel ${exp.naiveErr.toExponential(3)}) at ${coordsOf(index, dims)}: ` +
    `out ${out[index]}, ref ${exp.ref[index]}; relL2 ${relL2(out, exp.ref).toExponential(3)}; ` +
    `dump ${path}`,
  ];
}

/** Mask checks against the reference: exact equality, density, no empty row. */
function checkMask(got: MaskResult, exp: DraftExpected, c: DraftCase): string[] {
  const ref = exp.plan.mask;
  const g = ref.g;
  const problems: string[] = [];
  if (got.g !== g) return [`mask: g = ${got.g}, expected ${g}`];
  if (!(got.mask instanceof Uint8Array) || got.mask.length !== c.batch * c.heads * g * g) {
    return [
      `mask: expected a Uint8Array(${
        c.batch * c.heads * g * g
      }), got ${got.mask?.constructor?.name}(${got.mask?.length})`,
    ];
  }
  const diffs: string[] = [];
  let count = 0;
  for (let i = 0; i < ref.mask.length; i++) {
    if (got.mask[i] !== ref.mask[i]) {
      count++;
      if (diffs.length < 6) {
        const bh = Math.floor(i / (g * g));
        const r = Math.floor(i / g) % g, col = i % g;
        diffs.push(
          `(b=${Math.floor(bh / c.heads)}, h=${bh % c.heads}, i=${r}, j=${col}): got ${
            got.mask[i]
          }, ` +
            `ref ${ref.mask[i]}, P=${exp.plan.p[i].toPrecision(9)}, threshold ` +
            `${ref.thresholds[bh].toPrecision(9)}`,
        );
      }
    }
  }
  if (count) {
    problems.push(
      `mask: ${count} of ${ref.mask.length} entries differ from the reference (keep ${ref.keep}, ` +
        `margin ${ref.margin.toExponential(2)}): ${diffs.join("; ")}`,
    );
  }
  if (!(Math.abs(got.density - ref.density) < 1e-12)) {
    problems.push(`mask: density ${got.density}, reference ${ref.density}`);
  }
  for (let r = 0; r < c.batch * c.heads * g; r++) {
    if (!got.mask.subarray(r * g, (r + 1) * g).some((x) => x === 1)) {
      problems.push(`mask: query block row ${r} (b*h*g + i) has no key block`);
      break;
    }
  }
  return problems;
}

/** Whether batch element 0 and 1 of a `[B, H, g, g]` mask differ. */
function batchesDiffer(mask: Uint8Array, c: DraftCase, g: number): boolean {
  const per = c.heads * g * g;
  for (let i = 0; i < per; i++) if (mask[i] !== mask[per + i]) return true;
  return false;
}

function fail(label: string, problems: string[]): void {
  if (problems.length) throw new Error(`${label}:\n  - ${problems.join("\n  - ")}`);
}

// ---------------------------------------------------------------------------------------------
// Dense cases
// ---------------------------------------------------------------------------------------------

for (const name of BACKENDS) {
  for (const c of DENSE_CASES) {
    backendTest(name, c.name, async (rt) => {
      const prep = prepareDense(c);
      const op = rt.attention(denseOptions(c));
      try {
        const problems: string[] = [];
        for (const [r, exp] of prep.runs.entries()) {
          const label = `${name} ${c.name} run ${r}`;
          const out = await op.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
          problems.push(
            ...checkOutput(label, out, exp, prep.dims, c.dtype).map((p) => `run ${r} ${p}`),
          );
        }
        fail(`${name} ${c.name}`, problems);
      } finally {
        op.dispose();
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Draft cases
// ---------------------------------------------------------------------------------------------

for (const name of BACKENDS) {
  for (const c of DRAFT_CASES) {
    backendTest(name, c.name, async (rt) => {
      const prep = prepareDraft(c);
      const op: DraftAttentionOp = rt.draftAttention(draftOptions(c));
      const problems: string[] = [];
      try {
        const g = prep.runs[0].plan.order.g;
        if (op.g !== g) problems.push(`op.g = ${op.g}, reference g = ${g}`);
        for (const [r, exp] of prep.runs.entries()) {
          const tag = `run ${r} (seed ${exp.seed}${
            exp.rejected.length ? `, ${exp.rejected.length} seeds skipped for near-ties` : ""
          })`;
          const label = `${name} ${c.name} ${tag}`;
          const out = await op.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
          const got = await op.lastMask();
          const key = `${c.name} / run ${r}`;
          if (!masks.has(key)) masks.set(key, new Map());
          masks.get(key)!.set(name, got.mask.slice());
          problems.push(...checkMask(got, exp, c).map((p) => `${tag} ${p}`));
          problems.push(
            ...checkOutput(label, out, exp, prep.dims, c.dtype).map((p) => `${tag} ${p}`),
          );
          if (c.batchMasksDiffer) {
            assert.ok(
              batchesDiffer(exp.plan.mask.mask, c, g),
              `${c.name}: reference masks of the batch elements coincide; pick another case`,
            );
            if (!batchesDiffer(got.mask, c, g)) {
              problems.push(`${tag} mask: batch elements 0 and 1 got the same mask`);
            }
          }
          if (c.sparsity === 0) {
            if (!got.mask.every((x) => x === 1)) {
              problems.push(`${tag} mask: sparsity 0 but not all ones`);
            }
            if (got.density !== 1) {
              problems.push(`${tag} mask: sparsity 0 but density ${got.density}`);
            }
            const dense = rt.attention({ ...prep.dims, dtype: c.dtype });
            try {
              const d = await dense.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
              const { err, index } = maxAbsErr(out, d);
              if (!(err <= exp.tol)) {
                problems.push(
                  `${tag} sparsity 0 vs this backend's dense attention: max diff ${
                    err.toExponential(3)
                  } > ` +
                    `tol ${exp.tol.toExponential(3)} at ${coordsOf(index, prep.dims)} (${
                      out[index]
                    } vs ${d[index]})`,
                );
              }
            } finally {
              dense.dispose();
            }
          }
        }
      } finally {
        op.dispose();
      }
      fail(`${name} ${c.name}`, problems);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// WebGPU only: caller-owned buffers give what typed arrays give
// ---------------------------------------------------------------------------------------------

async function viaBuffers(
  rt: Runtime,
  op: { run(a: unknown): Promise<void> },
  inputs: TensorArray[],
) {
  const device = rt.device!;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const bufs = inputs.map((x) => {
    const b = device.createBuffer({ size: Math.ceil(x.byteLength / 4) * 4, usage });
    device.queue.writeBuffer(
      b,
      0,
      x.buffer as ArrayBuffer,
      x.byteOffset,
      Math.ceil(x.byteLength / 4) * 4,
    );
    return b;
  });
  const out = device.createBuffer({ size: bufs[0].size, usage });
  const read = device.createBuffer({
    size: bufs[0].size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    await op.run({ q: bufs[0], k: bufs[1], v: bufs[2], out });
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(out, 0, read, 0, out.size);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const bytes = read.getMappedRange().slice(0);
    read.unmap();
    return bytes;
  } finally {
    for (const b of [...bufs, out, read]) b.destroy();
  }
}

backendTest("webgpu", "run({ q, k, v, out }) on GPUBuffers equals run(q, k, v)", async (rt) => {
  const c = DRAFT_CASES.find((x) => x.rerun)!;
  const exp = prepareDraft(c).runs[0];
  const op = rt.draftAttention(draftOptions(c));
  try {
    const inputs = [exp.inputs.q, exp.inputs.k, exp.inputs.v];
    const viaArrays = await op.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
    const maskArrays = (await op.lastMask()).mask;
    const bytes = await viaBuffers(rt, op as unknown as { run(a: unknown): Promise<void> }, inputs);
    const viaBufs = new Float32Array(bytes, 0, viaArrays.length);
    assert.deepEqual(viaBufs, viaArrays);
    assert.deepEqual((await op.lastMask()).mask, maskArrays);
  } finally {
    op.dispose();
  }
});

// ---------------------------------------------------------------------------------------------
// Across backends
// ---------------------------------------------------------------------------------------------

{
  const missing = BACKENDS.filter((n) => !runtimes.has(n));
  Deno.test({
    name: `cross-backend: every configuration gives wasm's masks${
      missing.length ? ` [skipped: ${missing.join(", ")} unavailable]` : ""
    }`,
    ignore: missing.length > 0,
    fn: () => {
      const problems: string[] = [];
      for (const [key, byBackend] of masks) {
        const a = byBackend.get("wasm");
        for (const name of BACKENDS.slice(1)) {
          const b = byBackend.get(name);
          if (!a || !b) {
            problems.push(`${key}: no mask from ${!a ? "wasm" : name}`);
            continue;
          }
          let n = 0;
          for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) n++;
          if (a.length !== b.length || n) {
            problems.push(
              `${key}: ${name} differs from wasm in ${n} entries (lengths ${a.length}, ${b.length})`,
            );
          }
        }
      }
      if (masks.size === 0) problems.push("no masks were recorded");
      fail("cross-backend masks", problems);
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The shared planner (src/plan.ts) against the reference
// ---------------------------------------------------------------------------------------------

const PLAN_GEOMETRIES: RefGeometry[] = [
  ...DRAFT_CASES.map(geometryOf),
  { frames: 21, height: 30, width: 52, textTokens: 0, textPosition: "after", poolH: 8, poolW: 16 },
  { frames: 2, height: 45, width: 80, textTokens: 256, textPosition: "after", poolH: 8, poolW: 16 },
  {
    frames: 2,
    height: 30,
    width: 45,
    textTokens: 226,
    textPosition: "before",
    poolH: 8,
    poolW: 16,
  },
  { frames: 1, height: 1, width: 1, textTokens: 0, textPosition: "after", poolH: 8, poolW: 16 },
  { frames: 3, height: 7, width: 5, textTokens: 1, textPosition: "before", poolH: 2, poolW: 3 },
];

Deno.test("plan: token order and tiles equal the reference for every geometry", () => {
  for (const gm of PLAN_GEOMETRIES) {
    const ref = tokenOrder(gm);
    const plan = buildPlan(gm);
    const what = JSON.stringify(gm);
    assert.equal(plan.g, ref.g, what);
    assert.equal(plan.tokens, ref.tokens, what);
    assert.equal(plan.videoTokens, ref.videoTokens, what);
    assert.deepEqual([plan.nh, plan.nw], [ref.nh, ref.nw], what);
    assert.deepEqual(plan.order, ref.order, `order of ${what}`);
    assert.deepEqual(plan.inverse, ref.inverse, `inverse of ${what}`);
    const textTiles = Math.ceil(gm.textTokens / TEXT_TILE);
    assert.equal(plan.textTiles, textTiles, what);
    assert.equal(plan.tiles, ref.g + textTiles, what);
    for (let t = 0; t < ref.g; t++) {
      assert.equal(
        plan.tileStart[t],
        ref.inverse[ref.blockTokens[t][0]],
        `tileStart[${t}] of ${what}`,
      );
      assert.equal(plan.tileLen[t], ref.blockTokens[t].length, `tileLen[${t}] of ${what}`);
    }
    const textStart = gm.textPosition === "before" ? 0 : ref.videoTokens;
    for (let t = 0; t < textTiles; t++) {
      assert.equal(
        plan.tileStart[ref.g + t],
        textStart + t * TEXT_TILE,
        `text tile ${t} of ${what}`,
      );
      assert.equal(plan.tileLen[ref.g + t], Math.min(TEXT_TILE, gm.textTokens - t * TEXT_TILE));
    }
    assert.equal(plan.maxTileLen, Math.max(...plan.tileLen), what);
  }
});

Deno.test("plan: selectMask equals the reference selection on the same f32 maps, ties included", () => {
  // Selection of given values involves no arithmetic: exact agreement is required always, not
  // only away from near-ties. Maps with deliberate ties at and around the threshold.
  const rng = new Rng(17);
  let checked = 0;
  for (const g of [1, 2, 3, 7, 12, 32, 45]) {
    for (const s of [0, 0.5, 0.9, 0.97]) {
      for (const kind of ["random", "ties", "flat"] as const) {
        const p = new Float32Array(g * g);
        for (let i = 0; i < p.length; i++) {
          p[i] = kind === "flat"
            ? 1 / g
            : kind === "ties"
            ? Math.floor(rng.next() * 5) / 8
            : rng.next() * 2 ** (-20 * rng.next());
        }
        const keep = keepCount(g, s);
        const want = selectBlocks(p, g, keep).mask;
        assert.deepEqual(selectMask(p, g, keep), want, `g=${g} s=${s} ${kind}`);
        checked++;
      }
    }
  }
  assert.ok(checked > 50);
});

Deno.test("plan: block lists follow the mask (kept video tiles increasing, then text tiles)", () => {
  const rng = new Rng(23);
  for (const gm of PLAN_GEOMETRIES.slice(0, 8)) {
    const plan = buildPlan(gm);
    const { g, tiles } = plan;
    const mask = Uint8Array.from({ length: g * g }, () => (rng.next() < 0.3 ? 1 : 0));
    const { count, list } = maskToSchedule(mask, plan);
    for (let t = 0; t < tiles; t++) {
      const want: number[] = [];
      if (t < g) { for (let j = 0; j < g; j++) if (mask[t * g + j]) want.push(j); }
      for (let j = t < g ? g : 0; j < tiles; j++) want.push(j);
      assert.deepEqual(
        [...list.subarray(t * tiles, t * tiles + count[t])],
        want,
        `tile ${t} of ${JSON.stringify(gm)}`,
      );
    }
  }
});

Deno.test("cases: reference masks of every draft case clear the near-tie margin", () => {
  const lines: string[] = [];
  for (const c of DRAFT_CASES) {
    for (const run of prepareDraft(c).runs) {
      assert.ok(run.plan.mask.margin >= MASK_MARGIN);
      if (run.rejected.length) {
        lines.push(
          `${c.name}: seed ${run.seed} (rejected ${
            run.rejected.map((r) => `${r.seed}: margin ${r.margin.toExponential(1)}`).join(", ")
          })`,
        );
      }
      assert.ok(run.tol >= tolerance(0, c.dtype));
    }
  }
  if (lines.length) console.log(`  seeds advanced past near-ties:\n  ${lines.join("\n  ")}`);
});

Deno.test({
  name: "conformance: dispose the runtimes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => {
    for (const rt of runtimes.values()) rt.dispose();
    if (Deno.env.get("DRAFTATTN_VERBOSE") === "1") console.log(`  ${summary.join("\n  ")}`);
  },
});
