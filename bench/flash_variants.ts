/**
 * A/B of flash-attention kernel variants on one WebGPU device, in one process: every variant is
 * first checked on a small dense case and a small draft case against a float64 reference (max
 * abs error), then timed on large dense and draft shapes. Complements `deno task bench` (which
 * times the table's pick through the public API) when tuning src/webgpu/variants.ts.
 *
 *   deno run -A bench/flash_variants.ts [--quick] [--only REGEX] [--reps N]
 *
 * FLOPs: dense 4*B*H*N^2*D. Draft rows report the dense-equivalent rate (dense FLOPs / time,
 * comparable with the dense row, as in bench/bench.ts) and the rate of the work actually done
 * (kept query-key pairs, text counted in full). GPU time: several runs per synchronisation on
 * device buffers, median of three batches.
 */
import { parseArgs } from "node:util";
import { buildPlan } from "../src/plan.ts";
import { keepCount } from "../src/validate.ts";
import type { DenseSpec, DraftSpec, DType, Geometry, Plan, TensorArray } from "../src/types.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { WebGpuOp } from "../src/webgpu/op.ts";
import { flashConfig, type FlashVariant, pickFlashVariant } from "../src/webgpu/variants.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string", default: "" },
    reps: { type: "string", default: "" },
  },
});
const quick = args.quick;
const reps = Number(args.reps || (quick ? 1 : 3));

const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no WebGPU adapter");
const lim = adapter.limits;
const f16 = adapter.features.has("shader-f16");
// `subgroups` is requestable in Deno although unlisted.
const device = await adapter.requestDevice({
  requiredFeatures: [...(f16 ? ["shader-f16"] : []), "subgroups"] as GPUFeatureName[],
  requiredLimits: {
    maxComputeWorkgroupStorageSize: lim.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: lim.maxComputeInvocationsPerWorkgroup,
    maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize,
    maxBufferSize: lim.maxBufferSize,
  },
});
const ctx = new GpuContext(device);
console.log(
  `adapter: ${adapter.info.description || adapter.info.vendor} (${adapter.info.architecture}); ` +
    `workgroup memory ${lim.maxComputeWorkgroupStorageSize}, invocations ` +
    `${lim.maxComputeInvocationsPerWorkgroup}; shader-f16 ${f16}; subgroup size ` +
    `${ctx.subgroupSize}`,
);

// ---------------------------------------------------------------------------------------------
// Data and float64 references
// ---------------------------------------------------------------------------------------------

function random(n: number, seed: number, dtype: DType): TensorArray {
  const out = dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2 + (i % 7 === 0 ? 0.5 : 0); // a little bias, like real V
  }
  return out;
}

/** Float64 attention of BSHD tensors; `keysOf(b, h, t)` lists the raster keys of query t. */
function reference(
  spec: DenseSpec,
  q: TensorArray,
  k: TensorArray,
  v: TensorArray,
  keysOf: (b: number, h: number, t: number) => ArrayLike<number>,
): Float64Array {
  const { batch: B, tokens: N, heads: H, headDim: D, scale } = spec;
  const out = new Float64Array(B * N * H * D);
  const at = (b: number, t: number, h: number) => ((b * N + t) * H + h) * D;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < N; t++) {
        const keys = keysOf(b, h, t);
        const s = new Float64Array(keys.length);
        let m = -Infinity;
        for (let x = 0; x < keys.length; x++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[at(b, t, h) + d] * k[at(b, keys[x], h) + d];
          s[x] = dot * scale;
          m = Math.max(m, s[x]);
        }
        let z = 0;
        for (let x = 0; x < keys.length; x++) z += s[x] = Math.exp(s[x] - m);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let x = 0; x < keys.length; x++) acc += s[x] * v[at(b, keys[x], h) + d];
          out[at(b, t, h) + d] = acc / z;
        }
      }
    }
  }
  return out;
}

function maxErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  return worst;
}

/** Raster keys of every query of a draft op, from its mask (docs/spec.md stage 4). */
function draftKeys(plan: Plan, heads: number, mask: Uint8Array) {
  const { g, tiles } = plan;
  const tileOf = new Int32Array(plan.tokens);
  const members: number[][] = [];
  for (let t = 0; t < tiles; t++) {
    members.push([]);
    for (let p = plan.tileStart[t]; p < plan.tileStart[t] + plan.tileLen[t]; p++) {
      tileOf[plan.order[p]] = t;
      members[t].push(plan.order[p]);
    }
  }
  return (b: number, h: number, t: number) => {
    const i = tileOf[t];
    const keys: number[] = [];
    for (let j = 0; j < tiles; j++) {
      if (i >= g || j >= g || mask[((b * heads + h) * g + i) * g + j]) keys.push(...members[j]);
    }
    return keys;
  };
}

// ---------------------------------------------------------------------------------------------
// Checks and timings of one variant
// ---------------------------------------------------------------------------------------------

function denseSpec(tokens: number, heads: number, headDim: number, dtype: DType): DenseSpec {
  return {
    batch: 1,
    tokens,
    heads,
    headDim,
    layout: "BSHD",
    dtype,
    scale: 1 / Math.sqrt(headDim),
  };
}

function draftSpec(geom: Geometry, plan: Plan, heads: number, headDim: number, dtype: DType) {
  const sparsity = 0.9;
  const spec: DraftSpec = {
    ...denseSpec(plan.tokens, heads, headDim, dtype),
    ...geom,
    sparsity,
    policy: "percentile",
    keep: keepCount(plan.g, sparsity),
  };
  return spec;
}

async function checkDense(variant: FlashVariant | undefined, D: number, dtype: DType) {
  const spec = denseSpec(150, 2, D, dtype);
  const n = 150 * 2 * D;
  const [q, k, v] = [random(n, 1, dtype), random(n, 2, dtype), random(n, 3, dtype)];
  const op = new WebGpuOp(ctx, spec, undefined, () => {}, variant);
  const out = await op.run(q, k, v);
  op.dispose();
  const all = Array.from({ length: 150 }, (_, i) => i);
  return maxErr(out, reference(spec, q, k, v, () => all));
}

async function checkDraft(variant: FlashVariant | undefined, D: number, dtype: DType) {
  const geom: Geometry = {
    frames: 2,
    height: 13,
    width: 20,
    textTokens: 7,
    textPosition: "after",
    poolH: 8,
    poolW: 16,
  };
  const plan = buildPlan(geom);
  const spec = {
    ...draftSpec(geom, plan, 2, D, dtype),
    sparsity: 0.5,
    keep: keepCount(plan.g, 0.5),
  };
  const n = plan.tokens * 2 * D;
  const [q, k, v] = [random(n, 4, dtype), random(n, 5, dtype), random(n, 6, dtype)];
  const op = new WebGpuOp(ctx, spec, plan, () => {}, variant);
  const out = await op.run(q, k, v);
  const { mask } = await op.lastMask();
  op.dispose();
  return maxErr(out, reference(spec, q, k, v, draftKeys(plan, 2, mask)));
}

/** Median ms per run of `op` on device buffers (reps runs per synchronisation, 3 batches). */
async function time(op: WebGpuOp, spec: DenseSpec): Promise<number> {
  const n = spec.batch * spec.tokens * spec.heads * spec.headDim;
  const eb = spec.dtype === "f16" ? 2 : 4;
  const make = (seed: number) => {
    const b = device.createBuffer({
      size: n * eb,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    if (seed) {
      device.queue.writeBuffer(b, 0, random(n, seed, spec.dtype) as Float32Array<ArrayBuffer>);
    }
    return b;
  };
  const bufs = { q: make(1), k: make(2), v: make(3), out: make(0) };
  await op.runBuffers(bufs);
  await device.queue.onSubmittedWorkDone();
  const times: number[] = [];
  for (let batch = 0; batch < 3; batch++) {
    const t0 = performance.now();
    await Promise.all(Array.from({ length: reps }, () => op.runBuffers(bufs)));
    await device.queue.onSubmittedWorkDone();
    times.push((performance.now() - t0) / reps);
  }
  for (const b of Object.values(bufs)) b.destroy();
  return times.sort((a, b) => a - b)[1];
}

// ---------------------------------------------------------------------------------------------
// The A/B list
// ---------------------------------------------------------------------------------------------

interface Case {
  name: string;
  /** undefined: the table's pick for the device. */
  variant?: FlashVariant;
  headDim: number;
  dtypes: DType[];
  draft?: boolean;
}

const T = (
  rg: number,
  cg: number,
  tn: number,
  td4: number,
  opts: {
    tm4?: number;
    pf?: boolean;
    ve?: boolean;
    ud?: number;
    uj?: number;
    hs?: boolean;
    hq?: boolean;
    hm?: boolean;
    sg?: boolean;
    kx?: boolean;
    sv?: boolean;
    q8?: boolean;
    kh?: boolean;
    ph?: boolean;
  } = {},
): FlashVariant => ({ kernel: "tiled", tm4: 1, rg, cg, tn, td4, ...opts });
const CH = (rg: number, cg: number, td4: number, dk: number, vk: number): FlashVariant => ({
  kernel: "chunked",
  rg,
  cg,
  td4,
  dk,
  vk,
});

const BOTH: DType[] = ["f16", "f32"];
const FAST = { pf: true, ve: true, ud: 8, uj: 8 };
const SG = { ...FAST, hs: true, hq: true, sg: true };
const KX = { ...SG, hq: false, kx: true };
const SV = { ...SG, sv: true, kx: true };
const SUB = { ...SV, hq: true }; // f16 K/V and Q^T, subgroup rows, V over K, swizzled K
const SUBF = { ...FAST, sg: true, sv: true, kx: true }; // sub-rows in f32 workgroup memory
const PK = { ...SV, tm4: 2, q8: true }; // the f16 head-dim-128 pick's options
const PH = { ...PK, ph: true, uj: 32, pf: false, ve: false }; // round 22's best
const PV = { ...PK, ph: true, uj: 32, pf: false }; // the round-23 pick's options
const LK = { ...PK, pf: false, uj: 32 }; // the round-26 pick's options (f32 P V)
const CASES: Case[] = [
  // round 29: text query tiles (dense rows) dispatched ahead of the video tiles
  { name: "r29 table pick", headDim: 128, dtypes: BOTH, draft: true },
  { name: "r29 d64 table pick", headDim: 64, dtypes: ["f16"], draft: true },
  // round 28: native f16 loads, lane maxima before the row reductions, unswizzled K
  { name: "r28 table pick", headDim: 128, dtypes: BOTH, draft: true },
  {
    name: "r28 kx off",
    variant: T(8, 32, 1, 1, { ...LK, kx: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r28 kx off ud32",
    variant: T(8, 32, 1, 1, { ...LK, kx: false, ud: 32 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r28 f16-pv pick", variant: T(8, 32, 1, 1, PV), headDim: 128, dtypes: ["f16"] },
  { name: "r28 d64 table pick", headDim: 64, dtypes: ["f16"] },
  // round 26: the default (f32 P V) pick after round 25: load timing and unroll
  { name: "r26 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r26 pf off",
    variant: T(8, 32, 1, 1, { ...PK, pf: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r26 pf off uj32",
    variant: T(8, 32, 1, 1, { ...PK, pf: false, uj: 32 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r26 pf off uj16",
    variant: T(8, 32, 1, 1, { ...PK, pf: false, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r26 pf ve off",
    variant: T(8, 32, 1, 1, { ...PK, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r26 uj32", variant: T(8, 32, 1, 1, { ...PK, uj: 32 }), headDim: 128, dtypes: ["f16"] },
  {
    name: "r26 pf off ud16",
    variant: T(8, 32, 1, 1, { ...PK, pf: false, ud: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r26 twin pf off",
    variant: T(4, 32, 1, 1, { ...PK, pf: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  { name: "r26 f16-pv pick", variant: T(8, 32, 1, 1, PV), headDim: 128, dtypes: ["f16"] },
  // round 25: dense mode compiled into dense pipelines; O rescaled only where a row max moved
  { name: "r25 table pick", headDim: 128, dtypes: BOTH, draft: true },
  { name: "r25 d64 table pick", headDim: 64, dtypes: BOTH, draft: true },
  // round 24: around the f16 P V pick: S unroll, swizzle, V's own buffer
  { name: "r24 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  { name: "r24 ud16", variant: T(8, 32, 1, 1, { ...PV, ud: 16 }), headDim: 128, dtypes: ["f16"] },
  {
    name: "r24 padded K",
    variant: T(8, 32, 1, 1, { ...PV, kx: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r24 V own buffer",
    variant: T(8, 32, 1, 1, { ...PV, sv: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r24 V own buffer padded K",
    variant: T(8, 32, 1, 1, { ...PV, sv: false, kx: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r24 V own buffer 128x32 512thr",
    variant: T(16, 32, 1, 1, { ...PV, sv: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r24 32x32 V own buffer (24 KiB)",
    variant: T(4, 32, 1, 1, { ...PV, sv: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 23: f16 P V over whole chunks with plain loads: load timing, unroll, tile sizes
  { name: "r23 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  { name: "r23 64x32 ph", variant: T(8, 32, 1, 1, PH), headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r23 64x32 ph ud16",
    variant: T(8, 32, 1, 1, { ...PH, ud: 16 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r23 64x32 ph pf",
    variant: T(8, 32, 1, 1, { ...PH, pf: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r23 64x32 ph ve",
    variant: T(8, 32, 1, 1, { ...PH, ve: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r23 64x32 ph ud4",
    variant: T(8, 32, 1, 1, { ...PH, ud: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r23 32x32 ph (16 KiB)",
    variant: T(4, 32, 1, 1, PH),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r23 128x32 ph 512thr",
    variant: T(16, 32, 1, 1, PH),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r23 128x32 sub-rows ph uj16 512thr plain",
    variant: T(32, 16, 2, 2, { ...SV, ph: true, uj: 16, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r23 d64 128x32 sub-rows q8 ph uj16 plain",
    variant: T(16, 16, 2, 1, { ...SV, tm4: 2, q8: true, ph: true, uj: 16, pf: false, ve: false }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  // round 22: f16 P V, longer f16 runs, around the two best of round 21
  { name: "r22 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r22 64x32 ph uj32",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 32 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r22 64x32 sub-rows ph uj16",
    variant: T(16, 16, 2, 2, { ...SV, ph: true, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r22 128x32 sub-rows ph uj16 512thr",
    variant: T(32, 16, 2, 2, { ...SV, ph: true, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r22 32x32 sub-rows ph uj16 (16 KiB)",
    variant: T(8, 16, 2, 2, { ...SV, ph: true, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r22 32x32 ph uj32 (16 KiB)",
    variant: T(4, 32, 1, 1, { ...PK, ph: true, uj: 32 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r22 128x32 ph uj32 512thr",
    variant: T(16, 32, 1, 1, { ...PK, ph: true, uj: 32 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r22 64x32 ph uj32 ud16",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 32, ud: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r22 64x32 ph uj32 plain loads",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 32, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r22 128x32 sub-rows q8 ph uj16",
    variant: T(16, 16, 2, 2, { ...SV, tm4: 2, q8: true, ph: true, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r22 d64 64x32 kh ph uj16",
    variant: T(8, 32, 1, 1, { ...PK, kh: true, ph: true, uj: 16 }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r22 d64 128x32 sub-rows q8 ph uj16",
    variant: T(16, 16, 2, 1, { ...SV, tm4: 2, q8: true, ph: true, uj: 16 }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  // round 21: P V in f16 arithmetic (f16 sums over runs of uj keys, added into f32 O)
  { name: "r21 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r21 64x32 ph uj8",
    variant: T(8, 32, 1, 1, { ...PK, ph: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r21 64x32 ph uj16",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r21 64x32 ph uj32",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 32 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r21 64x32 ph uj4",
    variant: T(8, 32, 1, 1, { ...PK, ph: true, uj: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r21 32x32 ph uj8 (16 KiB)",
    variant: T(4, 32, 1, 1, { ...PK, ph: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r21 128x32 ph uj8 512thr",
    variant: T(16, 32, 1, 1, { ...PK, ph: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r21 64x32 sub-rows ph uj8",
    variant: T(16, 16, 2, 2, { ...SV, ph: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r21 64x32 kh ph td2",
    variant: T(8, 32, 1, 2, { ...PK, kh: true, ph: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r21 d64 table pick", headDim: 64, dtypes: ["f16"], draft: true },
  {
    name: "r21 d64 64x32 kh ph",
    variant: T(8, 32, 1, 1, { ...PK, kh: true, ph: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  // round 20: sub-rows with f32 Q^T (no conversions in S), f32 tiles on f16 inputs, more shapes
  { name: "r20 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r20 64x32 sub-rows f32 Q^T",
    variant: T(16, 16, 2, 2, { ...SUBF, hs: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r20 64x32 sub-rows f32 Q^T tm2 128thr",
    variant: T(8, 16, 2, 2, { ...SUBF, hs: true, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r20 64x32 sub-rows f32 tiles",
    variant: T(16, 16, 2, 2, SUBF),
    headDim: 128,
    dtypes: BOTH,
    draft: true,
  },
  {
    name: "r20 64x32 sub-rows f32 tiles tm2 128thr",
    variant: T(8, 16, 2, 2, { ...SUBF, tm4: 2 }),
    headDim: 128,
    dtypes: BOTH,
  },
  {
    name: "r20 64x32 sub-rows f32 tiles ud4",
    variant: T(16, 16, 2, 2, { ...SUBF, ud: 4 }),
    headDim: 128,
    dtypes: ["f32"],
  },
  { name: "r20 d64 table pick", headDim: 64, dtypes: BOTH, draft: true },
  {
    name: "r20 d64 64x32 sub-rows q8 128thr",
    variant: T(8, 16, 2, 1, { ...SUB, tm4: 2, q8: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "r20 d64 128x32 sub-rows q8",
    variant: T(16, 16, 2, 1, { ...SUB, tm4: 2, q8: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r20 d64 256x32 sub-rows q8 512thr",
    variant: T(32, 16, 2, 1, { ...SUB, tm4: 2, q8: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "r20 d64 64x32 sub-rows f32",
    variant: T(16, 16, 2, 1, SUBF),
    headDim: 64,
    dtypes: BOTH,
    draft: true,
  },
  {
    name: "r20 d64 128x32 sub-rows f32 tm2",
    variant: T(16, 16, 2, 1, { ...SUBF, tm4: 2 }),
    headDim: 64,
    dtypes: BOTH,
    draft: true,
  },
  // round 19: sub-rows (two row groups per subgroup of 32: 16 lanes x 2 keys of a 32-key chunk,
  // each Q^T load feeding twice the FMAs; P V over 8 dims per lane)
  { name: "r19 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r19 64x32 sub-rows",
    variant: T(16, 16, 2, 2, SUB),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r19 32x32 sub-rows 128thr",
    variant: T(8, 16, 2, 2, SUB),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r19 128x32 sub-rows 512thr",
    variant: T(32, 16, 2, 2, SUB),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r19 64x32 sub-rows plain loads",
    variant: T(16, 16, 2, 2, { ...SUB, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r19 64x32 sub-rows q8 128thr",
    variant: T(8, 16, 2, 2, { ...SUB, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r19 128x32 sub-rows q8",
    variant: T(16, 16, 2, 2, { ...SUB, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r19 64x32 quarter-rows 128thr",
    variant: T(16, 8, 4, 4, SUB),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r19 f32 table pick", headDim: 128, dtypes: ["f32"] },
  {
    name: "r19 f32 32x32 sub-rows",
    variant: T(8, 16, 2, 2, { ...FAST, sg: true, sv: true, kx: true }),
    headDim: 128,
    dtypes: ["f32"],
  },
  {
    name: "r19 f32 64x32 sub-rows",
    variant: T(16, 16, 2, 2, { ...FAST, sg: true, sv: true, kx: true }),
    headDim: 128,
    dtypes: ["f32"],
  },
  { name: "r19 d64 table pick", headDim: 64, dtypes: ["f16"], draft: true },
  {
    name: "r19 d64 128x32 sub-rows q8",
    variant: T(16, 16, 2, 1, { ...SUB, tm4: 2, q8: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r19 d64 64x32 sub-rows",
    variant: T(16, 16, 2, 1, SUB),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  // round 18: key halves at head dim 128 (8 dims per lane: twice the FMAs per P shuffle)
  { name: "r18 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r18 64x32 q8 kh td2",
    variant: T(8, 32, 1, 2, { ...SV, tm4: 2, q8: true, kh: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r18 32x32 kh td2",
    variant: T(8, 32, 1, 2, { ...SV, kh: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r18 64x32 q8 kh td2 128thr",
    variant: T(4, 32, 1, 2, { ...SV, tm4: 2, q8: true, kh: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 17: head dim 64 with subgroup rows, P V's keys split between the subgroup's halves
  { name: "r17 table pick d128", headDim: 128, dtypes: ["f16"] },
  { name: "r17 d64 table pick", headDim: 64, dtypes: BOTH, draft: true },
  {
    name: "r17 d64 64x32 kh q8 sv",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, q8: true, kh: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r17 d64 32x32 kh sv",
    variant: T(8, 32, 1, 1, { ...SV, kh: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r17 d64 128x32 kh q8 sv 512thr",
    variant: T(16, 32, 1, 1, { ...SV, tm4: 2, q8: true, kh: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "r17 d64 32x32 kh sv f32",
    variant: T(8, 32, 1, 1, { ...FAST, sg: true, sv: true, kx: true, kh: true }),
    headDim: 64,
    dtypes: BOTH,
    draft: true,
  },
  // round 16: more keys per lane with packed Q^T (S's loads shared by 2 keys), S unroll
  { name: "r16 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r16 64x64 q8 tn2 sv",
    variant: T(8, 32, 2, 1, { ...SV, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r16 32x64 q8 tn2 sv 128thr",
    variant: T(4, 32, 2, 1, { ...SV, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r16 64x32 q8 sv ud4",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, q8: true, ud: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r16 64x32 q8 sv ud16",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, q8: true, ud: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 14: Q^T packed 8 rows per 16-byte load (half the workgroup-memory loads in S)
  { name: "r14 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r14 64x32 tm2 q8 sv",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r14 128x32 tm2 q8 sv 512thr",
    variant: T(16, 32, 1, 1, { ...SV, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r14 32x32 tm2 q8 sv 128thr",
    variant: T(4, 32, 1, 1, { ...SV, tm4: 2, q8: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r14 d64 64x32 tm2 tn2 q8",
    variant: T(8, 16, 2, 1, { ...FAST, tm4: 2, hs: true, q8: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  // round 13: head dim 64 (CogVideoX, LTX-Video) with the round-6..10 options: f16 tiles, unpadded
  // swizzled K, smaller workgroup memory
  { name: "r13 d64 table pick", headDim: 64, dtypes: BOTH, draft: true },
  {
    name: "r13 d64 64x32 tn2 kx",
    variant: T(16, 16, 2, 1, { ...FAST, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "r13 d64 64x32 tn2 hs hq kx",
    variant: T(16, 16, 2, 1, { ...FAST, hs: true, hq: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r13 d64 64x32 tn2 hs kx",
    variant: T(16, 16, 2, 1, { ...FAST, hs: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "r13 d64 128x32 tm2 tn2 hs hq kx",
    variant: T(16, 16, 2, 1, { ...FAST, tm4: 2, hs: true, hq: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r13 d64 32x32 tn2 hs hq kx 128thr",
    variant: T(8, 16, 2, 1, { ...FAST, hs: true, hq: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r13 d64 64x64 tn4 hs hq kx",
    variant: T(16, 16, 4, 1, { ...FAST, hs: true, hq: true, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  // round 12: register pressure around the picks (smaller source unroll, no early loads)
  { name: "r12 table pick", headDim: 128, dtypes: ["f16"], draft: true },
  {
    name: "r12 64x32 tm2 hq sv ud4 uj4",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, ud: 4, uj: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r12 64x32 tm2 hq sv plain loads ud4 uj4",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, ud: 4, uj: 4, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r12 64x32 tm4 rg4 hq sv 128thr",
    variant: T(4, 32, 1, 1, { ...SV, tm4: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r12 128x32 tm2 hq sv 512thr plain loads",
    variant: T(16, 32, 1, 1, { ...SV, tm4: 2, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r12 32x32 f32 Q^T sv ud4 uj4 (draft)",
    variant: T(8, 32, 1, 1, { ...SV, hq: false, ud: 4, uj: 4 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r12 32x32 hq sv (draft)",
    variant: T(8, 32, 1, 1, SV),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  // round 10: more rows per workgroup for dense ops (K/V staging shared by more rows; NVIDIA
  // allows 1,024 invocations), with V over K
  { name: "r10 table pick", headDim: 128, dtypes: ["f16"] },
  {
    name: "r10 128x32 tm2 hq sv 512thr",
    variant: T(16, 32, 1, 1, { ...SV, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r10 64x32 tm1 f32 Q^T sv 512thr",
    variant: T(16, 32, 1, 1, { ...SV, hq: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r10 96x32 tm3 hq sv",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 3 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r10 64x32 tm2 hq sv",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r10 128x32 tm4 hq sv",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 9: the table after round 8 (dense: 64 x 32 f32 Q^T, V over K; draft: 32 x 32 f16, V
  // over K), against the other tile for each kind of op, and 32-row tiles with f32 Q^T
  { name: "r9 table pick (draft rows: the draft pick)", headDim: 128, dtypes: BOTH, draft: true },
  {
    name: "r9 64x32 f32 Q^T sv (dense pick) as draft",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, hq: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r9 32x32 sg sv (draft pick) as dense",
    variant: T(8, 32, 1, 1, SV),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r9 32x32 f32 Q^T sv 24KiB",
    variant: T(8, 32, 1, 1, { ...SV, hq: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r9 32x32 tm2 f32 Q^T sv 128thr 24KiB",
    variant: T(4, 32, 1, 1, { ...SV, tm4: 2, hq: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  // round 8: tiles for WebGPU's default limits (16 KiB, 256 invocations): subgroup rows with V
  // staged over K, against the chunked kernel that served them
  {
    name: "r8 16KiB chunked 32x32 (old default pick)",
    variant: CH(8, 8, 4, 16, 16),
    headDim: 128,
    dtypes: BOTH,
    draft: true,
  },
  {
    name: "r8 16KiB 32x32 sg sv",
    variant: T(8, 32, 1, 1, SV),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r8 16KiB 32x32 sg sv no pf ve",
    variant: T(8, 32, 1, 1, { ...SV, pf: false, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r8 16KiB 32x32 tm2 sg sv 128thr",
    variant: T(4, 32, 1, 1, { ...SV, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r8 48KiB 64x32 tm2 sg sv f32 Q^T",
    variant: T(8, 32, 1, 1, { ...SV, tm4: 2, hq: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 7: around the round-6 pick (f32 Q^T, swizzled K): unroll, early loads, rows per thread
  { name: "r7 table pick", headDim: 128, dtypes: BOTH },
  {
    name: "r7 tm2 kx ud16 uj16",
    variant: T(8, 32, 1, 1, { ...KX, tm4: 2, ud: 16, uj: 16 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm2 kx uj4",
    variant: T(8, 32, 1, 1, { ...KX, tm4: 2, uj: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm2 kx no pf",
    variant: T(8, 32, 1, 1, { ...KX, tm4: 2, pf: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm2 kx no ve",
    variant: T(8, 32, 1, 1, { ...KX, tm4: 2, ve: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm2 kx 128thr",
    variant: T(4, 32, 1, 1, { ...KX, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm4 kx 128thr",
    variant: T(4, 32, 1, 1, { ...KX, tm4: 4 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm4 hq kx 128thr",
    variant: T(4, 32, 1, 1, { ...SG, tm4: 4, kx: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r7 tm3 hq kx 128thr",
    variant: T(4, 32, 1, 1, { ...SG, tm4: 3, kx: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // round 6: f32 Q^T (no f16->f32 conversion per Q load in S) made to fit 48 KiB by an unpadded,
  // swizzled K chunk; and f32 inputs with subgroup rows, which did not fit before
  { name: "r6 table pick", headDim: 128, dtypes: BOTH, draft: true },
  {
    name: "r6 64x32 tm2 hs sg kx (f32 Q^T)",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2, hq: false, kx: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r6 64x32 tm2 hs hq sg kx",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2, kx: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r6 96x32 tm3 hs hq sg kx",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 3, kx: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r6 32x32 sg kx (f32 everything)",
    variant: T(8, 32, 1, 1, { ...FAST, sg: true, kx: true }),
    headDim: 128,
    dtypes: BOTH,
    draft: true,
  },
  {
    name: "r6 64x32 tn1 d64 tm2 sg kx",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2, hq: false, kx: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  // round 5: larger per-thread tiles in f16 memory with subgroup row groups (head dim 128)
  {
    name: "r5 32x32 tn1 256thr fast (run-3 pick)",
    variant: T(8, 32, 1, 1, FAST),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r5 64x32 tm2 hs hq sg",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r5 64x32 tm2 hs hq sg no pf",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2, pf: false }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r5 64x32 tm2 hm sg",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 2, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "r5 96x32 tm3 hs hq sg",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 3 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r5 96x32 tm3 hm sg",
    variant: T(8, 32, 1, 1, { ...SG, tm4: 3, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r5 32x64 tn2 hs hq sg", variant: T(8, 32, 2, 1, SG), headDim: 128, dtypes: ["f16"] },
  {
    name: "r5 32x64 tn2 hm sg",
    variant: T(8, 32, 2, 1, { ...SG, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "r5 32x32 tm2 hs hq sg 128thr",
    variant: T(4, 32, 1, 1, { ...SG, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "r5 table pick", headDim: 128, dtypes: BOTH, draft: true },
  // f16 workgroup memory (issue 4, round 4), head dim 128 then 64
  {
    name: "32x32 tn1 256thr fast (run-3 pick)",
    variant: T(8, 32, 1, 1, FAST),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "32x32 tn1 256thr fast hs",
    variant: T(8, 32, 1, 1, { ...FAST, hs: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "32x32 tn1 256thr fast hs hq",
    variant: T(8, 32, 1, 1, { ...FAST, hs: true, hq: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "32x32 tn1 256thr fast hm",
    variant: T(8, 32, 1, 1, { ...FAST, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "32x32 tn1 256thr fast hm ud2",
    variant: T(8, 32, 1, 1, { ...FAST, ud: 2, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "32x32 tn1 256thr fast hs sg",
    variant: T(8, 32, 1, 1, { ...FAST, hs: true, sg: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "32x32 tn1 256thr fast hm sg",
    variant: T(8, 32, 1, 1, { ...FAST, hm: true, sg: true }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "32x32 tn1 256thr hs sg (no pf)",
    variant: T(8, 32, 1, 1, { ud: 8, uj: 8, hs: true, sg: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tm2 256thr fast hs hq sg",
    variant: T(8, 32, 1, 1, { ...FAST, tm4: 2, hs: true, hq: true, sg: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "32x32 tn1 256thr fast sg (f32: no fit at 48 KiB)",
    variant: T(8, 32, 1, 1, { ...FAST, sg: true }),
    headDim: 128,
    dtypes: ["f32"],
  },
  {
    name: "32x64 tn2 256thr fast hs",
    variant: T(8, 32, 2, 1, { ...FAST, hs: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "32x64 tn2 256thr fast hm",
    variant: T(8, 32, 2, 1, { ...FAST, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tm2 256thr fast hs hq",
    variant: T(8, 32, 1, 1, { ...FAST, tm4: 2, hs: true, hq: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tm2 256thr fast hm",
    variant: T(8, 32, 1, 1, { ...FAST, tm4: 2, hm: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "16x32 tn1 128thr hs (32 KiB tier)",
    variant: T(4, 32, 1, 1, { hs: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tn2 256thr fast (run-3 pick)",
    variant: T(16, 16, 2, 1, FAST),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tn2 256thr fast hs",
    variant: T(16, 16, 2, 1, { ...FAST, hs: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  {
    name: "64x32 tn2 256thr fast hm",
    variant: T(16, 16, 2, 1, { ...FAST, hm: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  // earlier rounds
  // head dim 128
  {
    name: "chunked 64x64 (old pick)",
    variant: CH(16, 16, 2, 32, 32),
    headDim: 128,
    dtypes: ["f16"],
  },
  { name: "table pick", headDim: 128, dtypes: BOTH, draft: true },
  {
    name: "tiled 32x32 tn1 256thr",
    variant: T(8, 32, 1, 1),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  {
    name: "tiled 32x32 tn1 256thr pf ve",
    variant: T(8, 32, 1, 1, { pf: true, ve: true }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "tiled 32x32 tn1 256thr u8",
    variant: T(8, 32, 1, 1, { ud: 8, uj: 8 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  // 32 KiB tier of head dim 128
  { name: "tiled 16x32 tn1 128thr", variant: T(4, 32, 1, 1), headDim: 128, dtypes: ["f16"] },
  { name: "chunked 64x32 128thr", variant: CH(16, 8, 4, 32, 16), headDim: 128, dtypes: ["f16"] },
  // head dim 64
  {
    name: "chunked 64x64 (old pick)",
    variant: CH(16, 16, 1, 32, 32),
    headDim: 64,
    dtypes: ["f16"],
  },
  { name: "table pick", headDim: 64, dtypes: BOTH },
  { name: "tiled 64x32 tn2 256thr", variant: T(16, 16, 2, 1), headDim: 64, dtypes: ["f16"] },
  {
    name: "tiled 64x32 tn2 256thr pf ve",
    variant: T(16, 16, 2, 1, { pf: true, ve: true }),
    headDim: 64,
    dtypes: ["f16"],
  },
  // head dim 32
  { name: "chunked 64x32 (old pick)", variant: CH(16, 8, 1, 32, 32), headDim: 32, dtypes: ["f16"] },
  { name: "table pick", headDim: 32, dtypes: ["f16"] },
];

const dense = quick ? { N: 512, H: 2 } : { N: 16384, H: 8 };
const bigGeom: Geometry = quick
  ? { frames: 2, height: 16, width: 32, textTokens: 32, textPosition: "after", poolH: 8, poolW: 16 }
  : {
    frames: 8,
    height: 48,
    width: 80,
    textTokens: 256,
    textPosition: "after",
    poolH: 8,
    poolW: 16,
  };
const bigPlan = buildPlan(bigGeom);

const rows: string[] = [];
const only = args.only ? new RegExp(args.only) : undefined;
for (const c of CASES) {
  if (only && !only.test(`${c.name} d${c.headDim}`)) continue;
  for (const dtype of c.dtypes) {
    const config = c.variant
      ? flashConfig(c.variant, c.headDim, dtype === "f16" && f16, ctx.subgroupSize)
      : pickFlashVariant(c.headDim, ctx.limits, {
        dtype,
        shaderF16: f16,
        subgroupSize: ctx.subgroupSize,
      });
    const h = config.kernel === "tiled"
      ? ["hs", "hq", "hm", "sg"].filter((x) => config[x as "hs"]).join(" ")
      : "";
    const label = `${c.name} [${config.kernel} ${config.br}x${config.bc} ${config.threads} thr ` +
      `${config.smemBytes} B${h ? ` ${h}` : ""}]`;
    if (
      config.smemBytes > ctx.limits.maxComputeWorkgroupStorageSize ||
      config.threads > ctx.limits.maxComputeInvocationsPerWorkgroup
    ) {
      rows.push(`${label} d${c.headDim}: does not fit this device`);
      continue;
    }
    let errD: number, errS: number;
    try {
      errD = await checkDense(c.variant, c.headDim, dtype);
      errS = await checkDraft(c.variant, c.headDim, dtype);
    } catch (e) {
      rows.push(`${label} d${c.headDim} ${dtype}: FAILED ${e instanceof Error ? e.message : e}`);
      console.log(rows.at(-1));
      continue;
    }
    const ok = errD <= (dtype === "f16" ? 2e-3 : 2e-5) && errS <= (dtype === "f16" ? 2e-3 : 2e-5);
    const spec = denseSpec(dense.N, dense.H, c.headDim, dtype);
    const op = new WebGpuOp(ctx, spec, undefined, () => {}, c.variant);
    const ms = ok ? await time(op, spec) : NaN;
    op.dispose();
    const tf = (4 * dense.H * dense.N * dense.N * c.headDim) / (ms * 1e9);
    rows.push(
      `${label} d${c.headDim} ${dtype}: err ${errD.toExponential(1)}/${errS.toExponential(1)}` +
        `${ok ? "" : " WRONG"}  dense N=${dense.N} H=${dense.H}: ${ms.toFixed(2)} ms ` +
        `${tf.toFixed(3)} TFLOP/s`,
    );
    console.log(rows.at(-1));
    if (c.draft && ok) {
      const H = dense.H;
      const spec = draftSpec(bigGeom, bigPlan, H, c.headDim, dtype);
      const op = new WebGpuOp(ctx, spec, bigPlan, () => {}, c.variant);
      const ms = await time(op, spec);
      const { mask, g } = await op.lastMask();
      op.dispose();
      let pairs = 0;
      const { tileLen, tiles } = bigPlan;
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < tiles; i++) {
          for (let j = 0; j < tiles; j++) {
            if (i >= g || j >= g || mask[(h * g + i) * g + j]) pairs += tileLen[i] * tileLen[j];
          }
        }
      }
      const N = bigPlan.tokens;
      const eq = (4 * H * N * N * c.headDim) / (ms * 1e9);
      const work = (4 * pairs * c.headDim) / (ms * 1e9);
      rows.push(
        `${label} d${c.headDim} ${dtype}: draft N=${N} H=${H} s=0.9: ${ms.toFixed(2)} ms, ` +
          `${eq.toFixed(2)} dense-equivalent TFLOP/s, ${work.toFixed(2)} on kept pairs ` +
          `(${(pairs / (H * N * N)).toFixed(3)} of dense)`,
      );
      console.log(rows.at(-1));
    }
  }
}
console.log("\n" + rows.join("\n"));
