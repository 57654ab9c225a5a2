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
import { keepCount, maskConfig } from "../src/validate.ts";
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

function draftSpec(
  geom: Geometry,
  plan: Plan,
  heads: number,
  headDim: number,
  dtype: DType,
  sparsity = 0.9,
): DraftSpec {
  const spec = {
    ...denseSpec(plan.tokens, heads, headDim, dtype),
    ...geom,
    sparsity,
    policy: "percentile" as const,
    keep: keepCount(plan.g, sparsity),
  };
  return { ...spec, mask: maskConfig(spec, plan.g) };
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
  const spec = draftSpec(geom, plan, 2, D, dtype, 0.5);
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
    prefetchK?: boolean;
    earlyV?: boolean;
    ud?: number;
    uj?: number;
    f16KV?: boolean;
    f16QT?: boolean;
    f16S?: boolean;
    subgroupRows?: boolean;
    swizzleK?: boolean;
    vOverK?: boolean;
    packedQT?: boolean;
    keyHalves?: boolean;
    f16PV?: boolean;
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
/** The options of the tables' rows (src/webgpu/variants.ts: FAST, PACKED, LATE_K, F16PV). */
const FAST = { prefetchK: true, earlyV: true, ud: 8, uj: 8 };
const PACKED = {
  ...FAST,
  f16KV: true,
  f16QT: true,
  packedQT: true,
  subgroupRows: true,
  vOverK: true,
  swizzleK: true,
};
const LATE_K = { ...PACKED, prefetchK: false, uj: 32 }; // the f16 head-dim-128 pick (round 26)
const F16PV = { ...PACKED, f16PV: true, uj: 32, prefetchK: false }; // the f16-pv pick (round 23)
/** Sub-rows in f32 workgroup memory (the f32 head-dim-128 pick). */
const SUBF = { ...FAST, subgroupRows: true, vOverK: true, swizzleK: true };

/**
 * Current candidates only: the picks of src/webgpu/variants.ts for this device and their
 * nearest alternatives (the runner-up rows of the table and the options the last rounds
 * measured around the picks). The cases of rounds 1-30 were removed after round 30; they are in
 * this file's git history and their numbers in bench/RESULTS.md.
 */
const CASES: Case[] = [
  // The picks (`--only '^pick'`: the rows RESULTS.md's latest rounds compare).
  { name: "pick", headDim: 128, dtypes: BOTH, draft: true },
  { name: "pick", headDim: 64, dtypes: BOTH, draft: true },
  { name: "pick", headDim: 32, dtypes: ["f16"] },
  { name: "pick", headDim: 256, dtypes: ["f16"] },
  // Head dim 128, f16 on shader-f16 and subgroups of 32: the f16-pv pick, the 16 KiB twins.
  {
    name: "f16-pv 64x32",
    variant: T(8, 32, 1, 1, { ...F16PV, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "f16-pv 32x32 (16 KiB)",
    variant: T(4, 32, 1, 1, { ...F16PV, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "twin 32x32 (16 KiB)",
    variant: T(4, 32, 1, 1, { ...LATE_K, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  // Around the f16 pick: K loaded during P V (the round-25 pick), P V unrolled 8, K padded.
  {
    name: "pick + K prefetch, uj8",
    variant: T(8, 32, 1, 1, { ...PACKED, tm4: 2 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "pick uj8",
    variant: T(8, 32, 1, 1, { ...LATE_K, tm4: 2, uj: 8 }),
    headDim: 128,
    dtypes: ["f16"],
  },
  {
    name: "pick, K padded",
    variant: T(8, 32, 1, 1, { ...LATE_K, tm4: 2, swizzleK: false }),
    headDim: 128,
    dtypes: ["f16"],
    draft: true,
  },
  // Head dim 128, f32 workgroup memory: the sub-rows pick and the next rows of the table.
  { name: "f32 sub-rows 64x32", variant: T(16, 16, 2, 2, SUBF), headDim: 128, dtypes: ["f32"] },
  {
    name: "f32 subgroup rows 32x32",
    variant: T(8, 32, 1, 1, { ...FAST, subgroupRows: true, swizzleK: true }),
    headDim: 128,
    dtypes: ["f32"],
  },
  { name: "f32 no subgroups 32x32", variant: T(8, 32, 1, 1, FAST), headDim: 128, dtypes: ["f32"] },
  {
    name: "chunked 32x32 (16 KiB)",
    variant: CH(8, 8, 4, 16, 16),
    headDim: 128,
    dtypes: ["f32"],
  },
  // Head dim 64: the packed key-halves tile (the f16 pick within 16 KiB).
  {
    name: "d64 packed key halves",
    variant: T(8, 32, 1, 1, { ...PACKED, tm4: 2, keyHalves: true }),
    headDim: 64,
    dtypes: ["f16"],
    draft: true,
  },
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
      ? (["f16KV", "f16QT", "f16S", "subgroupRows"] as const).filter((x) => config[x]).join(" ")
      : "";
    const label = `${c.name} [${config.file} ${config.br}x${config.bc} ${config.threads} thr ` +
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
