/**
 * Reliability: extreme numerics, device loss and recovery, memory limits and out-of-memory, and
 * concurrency, through the public API on both backends. Nothing may be lost (every call settles
 * with a result or a `DraftAttentionError`), nothing may hang (every wait is bounded), and no
 * GPU buffer may leak: the test wraps `GPUDevice.prototype.createBuffer` and
 * `GPUBuffer.prototype.destroy` and counts the live buffers of every device.
 *
 * WebGPU follows the suite's missing-GPU policy (test/_cases.ts): a failure under CI=true, a
 * failure elsewhere unless DRAFTATTN_SKIP_GPU=1.
 */
import assert from "node:assert/strict";
import {
  type AttentionOp,
  DraftAttentionError,
  type DraftAttentionOp,
  openRuntime,
} from "../mod.ts";
import { firstNonFinite } from "../src/runtime.ts";
import type { DType, Layout, TensorArray } from "../src/types.ts";
import {
  type Availability,
  type DraftCase,
  draftOptions,
  gpuMissing,
  prepareDense,
  prepareDraft,
  reasonOf,
  TOLERANCE,
} from "./_cases.ts";
import {
  allocTensor,
  assertFinite,
  attentionF64,
  attentionNaive,
  coordsOf,
  type Dims,
  type KeySets,
  maskedKeys,
  maxAbs,
  maxAbsErr,
  type RefGeometry,
  Rng,
  tokenOrder,
} from "./reference.ts";

// ---------------------------------------------------------------------------------------------
// Live GPU buffers, per device
// ---------------------------------------------------------------------------------------------

const live = new Map<GPUBuffer, GPUDevice>();
if (typeof GPUDevice !== "undefined") {
  const create = GPUDevice.prototype.createBuffer;
  GPUDevice.prototype.createBuffer = function (this: GPUDevice, d: GPUBufferDescriptor) {
    const b = create.call(this, d);
    live.set(b, this);
    return b;
  };
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function (this: GPUBuffer) {
    live.delete(this);
    return destroy.call(this);
  };
}

/** Live (created, not destroyed) buffers of `device`, or of every device. */
function liveBuffers(device?: GPUDevice): number {
  let n = 0;
  for (const d of live.values()) if (device === undefined || d === device) n++;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Rejects when `p` has not settled after `ms`: a hang is a failure, not a stuck test. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Awaits `p` and returns its DraftAttentionError; fails on a result or another error. */
async function rejection(p: Promise<unknown>, what: string): Promise<DraftAttentionError> {
  try {
    await within(p, 20_000, what);
  } catch (e) {
    assert.ok(e instanceof DraftAttentionError, `${what}: not a DraftAttentionError: ${e}`);
    return e;
  }
  assert.fail(`${what}: resolved; expected a rejection`);
}

let gpuAvailability: Availability = {};
try {
  (await openRuntime({ backend: "webgpu" })).dispose();
} catch (e) {
  gpuAvailability = gpuMissing(reasonOf(e));
}

const BACKENDS = ["wasm", "webgpu"] as const;
type Backend = typeof BACKENDS[number];

function relTest(
  name: string,
  backend: Backend | "webgpu-only",
  fn: () => Promise<void>,
): void {
  const gpu = backend !== "wasm";
  const why = gpu ? gpuAvailability.skip ?? "" : "";
  Deno.test({
    name: `reliability (${backend === "webgpu-only" ? "webgpu" : backend}): ${name}${
      why ? ` [skipped: ${why}]` : ""
    }`,
    ignore: why !== "",
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => {
      if (gpu && gpuAvailability.failure) throw new Error(gpuAvailability.failure);
      return fn();
    },
  });
}

const toArray = (dtype: DType, xs: ArrayLike<number>): TensorArray => {
  const a = allocTensor(dtype, xs.length);
  a.set(xs as ArrayLike<number>);
  return a;
};

/**
 * Checks `out` against the float64 reference on the same (storage-rounded) inputs and keys:
 * finite everywhere, and max error within the larger of two bounds:
 *
 * - 2 x a naive f32 kernel's error + a floor (the suite's rule; the naive kernel is the f32 one
 *   even for f16 storage, since the kernels compute scores and softmax in f32 whatever the
 *   storage, plus the f16 rounding of the output);
 * - the conditioning of the problem itself: an f32 logit of magnitude L carries an error of a
 *   few ulps of the products summed into it, `delta = 2^-22 * L1` with `L1 = scale * sum |q_d
 *   k_d|` (4 ulps), and a weight error `delta` moves an output by at most
 *   `delta / 4 * (max v - min v)`. At logits of 1e4 this is ~8e-3, whichever kernel computes.
 */
function checkAgainstReference(
  what: string,
  out: TensorArray,
  inputs: { q: TensorArray; k: TensorArray; v: TensorArray },
  dims: Dims,
  scale: number,
  dtype: DType,
  keys?: KeySets,
): { err: number; tol: number } {
  assertFinite(out, what);
  const ref = attentionF64({ ...inputs, dims, scale, keys });
  const naive = attentionNaive({ ...inputs, dims, scale, keys, precision: "f32" });
  const naiveErr = maxAbsErr(naive, ref).err;
  const rounding = dtype === "f16" ? maxAbs(ref) * 2 ** -11 : 0;
  let vMin = Infinity, vMax = -Infinity;
  for (const x of inputs.v) {
    vMin = Math.min(vMin, x);
    vMax = Math.max(vMax, x);
  }
  const conditioning = (2 ** -22 * logits(inputs.q, inputs.k, dims, scale).l1 / 4) *
    (vMax - vMin);
  const tol = Math.max(2 * naiveErr, conditioning) + rounding + TOLERANCE[dtype].floor;
  const { err, index } = maxAbsErr(out, ref);
  assert.ok(
    err <= tol,
    `${what}: max |out - ref| = ${err.toExponential(3)} > tol ${tol.toExponential(3)} at ` +
      `${coordsOf(index, dims)} (out ${out[index]}, ref ${ref[index]})`,
  );
  return { err, tol };
}

/**
 * Over every (query, key) pair of one problem: the largest |logit| = |q . k| * scale, and the
 * largest `scale * sum_d |q_d k_d|` (what an f32 dot product's rounding scales with).
 */
function logits(
  q: TensorArray,
  k: TensorArray,
  dims: Dims,
  scale: number,
): { max: number; l1: number } {
  const { batch: B, tokens: N, heads: H, headDim: D } = dims;
  const at = (b: number, t: number, h: number) =>
    dims.layout === "BSHD" ? ((b * N + t) * H + h) * D : ((b * H + h) * N + t) * D;
  let max = 0, l1 = 0;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < N; i++) {
        const qi = at(b, i, h);
        for (let j = 0; j < N; j++) {
          const kj = at(b, j, h);
          let s = 0, a = 0;
          for (let d = 0; d < D; d++) {
            const p = q[qi + d] * k[kj + d];
            s += p;
            a += Math.abs(p);
          }
          max = Math.max(max, Math.abs(s * scale));
          l1 = Math.max(l1, a * scale);
        }
      }
    }
  }
  return { max, l1 };
}

// ---------------------------------------------------------------------------------------------
// Numerics: huge logits, all-equal scores, zero vectors, rows far below the maximum
// ---------------------------------------------------------------------------------------------

/** One numerics problem: q, k, v (as numbers) for a geometry. */
interface Problem {
  name: string;
  make(rng: Rng, dims: Dims): { q: number[]; k: number[]; v: number[] };
  /** Smallest max |logit| the inputs must reach (so the case tests what it claims). */
  minLogit?: number;
}

const normal = (rng: Rng, n: number, a = 1) => Array.from({ length: n }, () => a * rng.normal());

/**
 * The problems. Logits reach +-1e4: q, k of standard deviation 50 give |q.k| / sqrt(D) of
 * standard deviation 2,500, up to ~1e4 over the pairs; every value is exactly representable in
 * f16 (integers, and multiples of 1/64 near 16).
 */
const PROBLEMS: Problem[] = [
  {
    name: "logits up to +-1e4",
    make: (rng, d) => {
      const n = d.batch * d.tokens * d.heads * d.headDim;
      const big = () => Array.from({ length: n }, () => Math.round(50 * rng.normal()));
      return { q: big(), k: big(), v: normal(rng, n) };
    },
    minLogit: 5e3,
  },
  {
    name: "all-equal scores (every key the same vector)",
    make: (rng, d) => {
      const n = d.batch * d.tokens * d.heads * d.headDim;
      const row = normal(rng, d.headDim, 4).map((x) => Math.round(x * 8) / 8);
      return {
        q: normal(rng, n, 4).map((x) => Math.round(x * 8) / 8),
        k: Array.from({ length: n }, (_, i) => row[i % d.headDim]),
        v: normal(rng, n),
      };
    },
  },
  {
    name: "zero q and k (uniform attention)",
    make: (rng, d) => {
      const n = d.batch * d.tokens * d.heads * d.headDim;
      return { q: new Array(n).fill(0), k: new Array(n).fill(0), v: normal(rng, n) };
    },
  },
  {
    name: "all-zero q, k and v",
    make: (_rng, d) => {
      const n = d.batch * d.tokens * d.heads * d.headDim;
      return { q: new Array(n).fill(0), k: new Array(n).fill(0), v: new Array(n).fill(0) };
    },
  },
  {
    name: "rows whose every key is ~1e4 below zero",
    // Every key is u + small noise; every query is -c u: all logits of a row near -1e4, a few
    // units apart. A softmax whose running maximum starts at 0 (not at the row's own maximum)
    // underflows to 0/0 here.
    make: (rng, d) => {
      const n = d.batch * d.tokens * d.heads * d.headDim;
      const q = Array.from({ length: n }, (_, i) => -(96 + 8 * (i % 3)));
      const k = Array.from({ length: n }, () => 16 + Math.round(rng.normal() * 2) / 64);
      return { q, k, v: normal(rng, n) };
    },
    minLogit: 5e3,
  },
];

const NUMERIC_DENSE = { batch: 1, tokens: 97, heads: 2, headDim: 32 } as const;
const NUMERIC_DRAFT = {
  frames: 2,
  height: 9,
  width: 20,
  textTokens: 5,
  pool: [4, 8] as [number, number],
  heads: 2,
  headDim: 32,
  sparsity: 0.75,
} as const;

for (const backend of BACKENDS) {
  relTest(
    "extreme inputs give finite outputs matching the float64 reference",
    backend,
    async () => {
      const rt = await openRuntime({ backend });
      const lines: string[] = [];
      try {
        for (const dtype of ["f32", "f16"] as const) {
          for (const layout of ["BSHD", "BHSD"] as const) {
            for (const [pi, problem] of PROBLEMS.entries()) {
              const rng = new Rng(1000 + pi);
              // Dense.
              {
                const dims: Dims = { ...NUMERIC_DENSE, layout };
                const scale = 1 / Math.sqrt(dims.headDim);
                const raw = problem.make(rng, dims);
                const inputs = {
                  q: toArray(dtype, raw.q),
                  k: toArray(dtype, raw.k),
                  v: toArray(dtype, raw.v),
                };
                if (problem.minLogit) {
                  const m = logits(inputs.q, inputs.k, dims, scale).max;
                  assert.ok(m >= problem.minLogit, `${problem.name}: max |logit| only ${m}`);
                }
                const op = rt.attention({ ...NUMERIC_DENSE, layout, dtype });
                const out = await op.run(inputs.q, inputs.k, inputs.v);
                op.dispose();
                const what = `${backend} dense ${dtype} ${layout} ${problem.name}`;
                const r = checkAgainstReference(what, out, inputs, dims, scale, dtype);
                lines.push(`${what}: err ${r.err.toExponential(2)} tol ${r.tol.toExponential(2)}`);
              }
              // Draft, compared through the backend's own mask (with logits of 1e4 the draft map
              // is one-hot up to f32 underflow, so the selection there is a matter of ties).
              {
                const geometry: RefGeometry = {
                  frames: NUMERIC_DRAFT.frames,
                  height: NUMERIC_DRAFT.height,
                  width: NUMERIC_DRAFT.width,
                  textTokens: NUMERIC_DRAFT.textTokens,
                  textPosition: "after",
                  poolH: NUMERIC_DRAFT.pool[0],
                  poolW: NUMERIC_DRAFT.pool[1],
                };
                const order = tokenOrder(geometry);
                const dims: Dims = {
                  batch: 1,
                  tokens: order.tokens,
                  heads: NUMERIC_DRAFT.heads,
                  headDim: NUMERIC_DRAFT.headDim,
                  layout,
                };
                const scale = 1 / Math.sqrt(dims.headDim);
                const raw = problem.make(rng, dims);
                const inputs = {
                  q: toArray(dtype, raw.q),
                  k: toArray(dtype, raw.k),
                  v: toArray(dtype, raw.v),
                };
                const op = rt.draftAttention({ ...NUMERIC_DRAFT, layout, dtype });
                const out = await op.run(inputs.q, inputs.k, inputs.v);
                const { mask, g } = await op.lastMask();
                op.dispose();
                const what = `${backend} draft ${dtype} ${layout} ${problem.name}`;
                for (let row = 0; row < dims.heads * g; row++) {
                  assert.ok(
                    mask.subarray(row * g, row * g + g).some((x) => x === 1),
                    `${what}: mask row ${row} keeps no block`,
                  );
                }
                const keys = maskedKeys(order, mask, dims.heads);
                const r = checkAgainstReference(what, out, inputs, dims, scale, dtype, keys);
                lines.push(`${what}: err ${r.err.toExponential(2)} tol ${r.tol.toExponential(2)}`);
              }
            }
          }
        }
      } finally {
        rt.dispose();
      }
      if (Deno.env.get("DRAFTATTN_VERBOSE")) console.log(lines.join("\n"));
    },
  );
}

relTest(
  "NaN in GPUBuffer inputs: the run settles, and the op is clean for the next run",
  "webgpu-only",
  async () => {
    const rt = await openRuntime({ backend: "webgpu" });
    const device = rt.device!;
    const opts = { ...NUMERIC_DRAFT, layout: "BSHD" as Layout, dtype: "f32" as DType };
    const op = rt.draftAttention(opts);
    const n = op.spec.tokens * opts.heads * opts.headDim;
    const rng = new Rng(7);
    const clean = {
      q: Float32Array.from(normal(rng, n)),
      k: Float32Array.from(normal(rng, n)),
      v: Float32Array.from(normal(rng, n)),
    };
    const U = GPUBufferUsage;
    const buf = (x: Float32Array<ArrayBuffer>) => {
      const b = device.createBuffer({ size: x.byteLength, usage: U.STORAGE | U.COPY_DST });
      device.queue.writeBuffer(b, 0, x);
      return b;
    };
    const poisoned = Float32Array.from(clean.q);
    poisoned[3] = NaN;
    poisoned[n - 1] = Infinity;
    const bufs = {
      q: buf(poisoned),
      k: buf(clean.k),
      v: buf(clean.v),
      out: buf(new Float32Array(n)),
    };
    try {
      // Documented: GPU inputs are not scanned; the run completes (its outputs are undefined).
      await within(op.run(bufs), 20_000, "run on NaN buffers");
      // Typed arrays are scanned and refused.
      const e = await rejection(op.run(poisoned, clean.k, clean.v), "NaN q array");
      assert.equal(e.code, "INVALID_INPUT");
      assert.equal(e.field, "q");
      // The same op on clean data: exact agreement with a fresh op (no poisoned state).
      const out = await op.run(clean.q, clean.k, clean.v);
      const fresh = rt.draftAttention(opts);
      const want = await fresh.run(clean.q, clean.k, clean.v);
      assert.deepEqual((await op.lastMask()).mask, (await fresh.lastMask()).mask);
      fresh.dispose();
      assert.deepEqual(out, want);
    } finally {
      op.dispose();
      for (const b of Object.values(bufs)) b.destroy();
      rt.dispose();
    }
    assert.equal(liveBuffers(device), 0, "buffers left on the device");
  },
);

// ---------------------------------------------------------------------------------------------
// Device loss and recovery
// ---------------------------------------------------------------------------------------------

const LOSS_DENSE = { tokens: 65, heads: 2, headDim: 16 } as const;
const LOSS_DRAFT = {
  frames: 2,
  height: 5,
  width: 9,
  textTokens: 3,
  pool: [2, 4] as [number, number],
  heads: 2,
  headDim: 16,
  sparsity: 0.5,
} as const;

/** Runs `op` on seeded inputs and checks the output against the float64 reference. */
async function runChecked(op: AttentionOp, seed: number, what: string): Promise<void> {
  const { batch, tokens, heads, headDim, layout, dtype, scale } = op.spec;
  const dims: Dims = { batch, tokens, heads, headDim, layout };
  const rng = new Rng(seed);
  const n = batch * tokens * heads * headDim;
  const inputs = {
    q: toArray(dtype, normal(rng, n)),
    k: toArray(dtype, normal(rng, n)),
    v: toArray(dtype, normal(rng, n)),
  };
  const out = await within(op.run(inputs.q, inputs.k, inputs.v), 20_000, what);
  let keys: KeySets | undefined;
  if ((op as DraftAttentionOp).g > 0) {
    const d = op as DraftAttentionOp;
    const s = d.spec;
    const order = tokenOrder({ ...s, poolH: s.poolH, poolW: s.poolW });
    keys = maskedKeys(order, (await d.lastMask()).mask, heads);
  }
  checkAgainstReference(what, out, inputs, dims, scale, dtype, keys);
}

/** `op.run({ q, k, v, out })` on buffers of `device` equals `op.run(q, k, v)`, bit for bit. */
async function bufferRunMatches(device: GPUDevice, op: AttentionOp, seed: number): Promise<void> {
  const { batch, tokens, heads, headDim } = op.spec;
  const n = batch * tokens * heads * headDim;
  const rng = new Rng(seed);
  const [q, k, v] = [0, 1, 2].map(() => Float32Array.from(normal(rng, n)));
  const U = GPUBufferUsage;
  const make = (x?: Float32Array<ArrayBuffer>) => {
    const b = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_DST | U.COPY_SRC });
    if (x) device.queue.writeBuffer(b, 0, x);
    return b;
  };
  const bufs = { q: make(q), k: make(k), v: make(v), out: make() };
  const read = device.createBuffer({ size: n * 4, usage: U.MAP_READ | U.COPY_DST });
  try {
    await within(op.run(bufs), 20_000, "run on caller buffers");
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(bufs.out, 0, read, 0, n * 4);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const got = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    assert.deepEqual(got, await op.run(q, k, v));
  } finally {
    for (const b of [...Object.values(bufs), read]) b.destroy();
  }
}

relTest(
  "device.destroy() between runs: DEVICE_LOST once, then a new device, no buffer left",
  "webgpu-only",
  async () => {
    const before = liveBuffers();
    const rt = await openRuntime({ backend: "webgpu" });
    const dense = rt.attention(LOSS_DENSE);
    const draft = rt.draftAttention(LOSS_DRAFT);
    await runChecked(dense, 1, "dense before the loss");
    await runChecked(draft, 2, "draft before the loss");
    const old = rt.device!;
    assert.ok(liveBuffers(old) > 0);
    old.destroy();
    await old.lost;
    // The first call after the loss reports it...
    const e = await rejection(
      dense.run(new Float32Array(65 * 32), new Float32Array(65 * 32), new Float32Array(65 * 32)),
      "run after the loss",
    );
    assert.equal(e.code, "DEVICE_LOST", e.message);
    assert.equal(e.field, "device");
    assert.match(e.message, /next call runs on a new device/);
    // By the time the loss is reported the runtime is on a new device, where caller buffers
    // can be made at once ...
    assert.equal(rt.backend, "webgpu");
    assert.notEqual(rt.device, old);
    await bufferRunMatches(rt.device!, draft, 6);
    // ... and the next calls run there, the ops rebuilt on first use.
    await runChecked(dense, 3, "dense after the loss");
    await runChecked(draft, 4, "draft after the loss");
    assert.match(rt.describe().reason, /reopened/);
    assert.equal(liveBuffers(old), 0, "buffers of the lost device were not destroyed");
    // New ops and caller buffers work on the new device.
    const another = rt.draftAttention({ ...LOSS_DRAFT, layout: "BHSD" });
    await runChecked(another, 5, "new op after the loss");
    rt.dispose();
    assert.equal(liveBuffers(), before, "buffers left after dispose");
  },
);

relTest(
  "device.destroy() during runs: every run settles (result or DEVICE_LOST), then recovery",
  "webgpu-only",
  async () => {
    const before = liveBuffers();
    const rt = await openRuntime({ backend: "webgpu" });
    const ops = [
      rt.attention({ tokens: 512, heads: 2, headDim: 32 }),
      rt.draftAttention({ ...LOSS_DRAFT, frames: 4, height: 16, width: 16 }),
      rt.attention({ ...LOSS_DENSE, dtype: "f16", layout: "BHSD" }),
    ];
    for (const [i, op] of ops.entries()) await runChecked(op, 10 + i, `warm-up ${i}`);
    const old = rt.device!;
    // Destroy right after submission (runs in flight), and again mid-way for a second batch.
    for (const delay of [0, 5]) {
      const device = rt.device!;
      const runs = ops.flatMap((op, i) =>
        [0, 1].map((r) => {
          const n = op.spec.batch * op.spec.tokens * op.spec.heads * op.spec.headDim;
          const x = op.spec.dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
          x.fill(0.25 * (r + 1));
          return op.run(x, x, x).then(
            (out) => ({ ok: true as const, out, i }),
            (e: unknown) => ({ ok: false as const, e, i }),
          );
        })
      );
      if (delay === 0) device.destroy();
      else setTimeout(() => device.destroy(), delay);
      const settled = await within(
        Promise.all(runs),
        30_000,
        `runs with destroy after ${delay} ms`,
      );
      let lost = 0;
      for (const s of settled) {
        if (s.ok) {
          // A run that finished before the loss is correct: v is constant, so out == v.
          assert.ok(s.out.every((y) => Math.abs(y - s.out[0]) < 1e-3), "a corrupted output");
        } else {
          assert.ok(s.e instanceof DraftAttentionError, `raw error ${s.e}`);
          assert.equal(s.e.code, "DEVICE_LOST", s.e.message);
          lost++;
        }
      }
      assert.ok(lost > 0, `destroy after ${delay} ms: no run saw the loss`);
      assert.notEqual(rt.device, device, "DEVICE_LOST was answered before the recovery");
      // Recovery: the next runs are correct on a new device.
      for (const [i, op] of ops.entries()) {
        await runChecked(op, 20 + i + delay, `after destroy at ${delay} ms, op ${i}`);
      }
      assert.notEqual(rt.device, device);
      assert.equal(liveBuffers(device), 0, "buffers of the lost device were not destroyed");
    }
    assert.equal(liveBuffers(old), 0);
    rt.dispose();
    assert.equal(liveBuffers(), before, "buffers left after dispose");
  },
);

relTest(
  "device lost and no adapter: the runtime falls back to WebAssembly",
  "webgpu-only",
  async () => {
    const before = liveBuffers();
    const rt = await openRuntime({ backend: "webgpu" });
    const draft = rt.draftAttention(LOSS_DRAFT);
    await runChecked(draft, 30, "draft on the GPU");
    const gpu = navigator.gpu;
    const request = gpu.requestAdapter;
    gpu.requestAdapter = () => Promise.resolve(null);
    try {
      rt.device!.destroy();
      const n = draft.spec.tokens * 2 * 16;
      const x = new Float32Array(n);
      const e = await rejection(draft.run(x, x, x), "run after the loss");
      assert.equal(e.code, "DEVICE_LOST");
      await runChecked(draft, 31, "draft after the fallback");
      assert.equal(rt.backend, "wasm");
      assert.equal(rt.device, undefined);
      assert.match(rt.describe().reason, /lost/);
      const e2 = await rejection(
        (draft.run as (a: unknown) => Promise<void>)({ q: 1, k: 2, v: 3, out: 4 }),
        "GPUBuffer run on the fallback",
      );
      assert.equal(e2.code, "UNSUPPORTED");
    } finally {
      gpu.requestAdapter = request;
      rt.dispose();
    }
    assert.equal(liveBuffers(), before, "buffers left after dispose");
  },
);

relTest(
  "a caller's device cannot be replaced: DEVICE_LOST on every call, saying so",
  "webgpu-only",
  async () => {
    const adapter = await navigator.gpu.requestAdapter();
    const device = await adapter!.requestDevice();
    const rt = await openRuntime({ device });
    const op = rt.attention(LOSS_DENSE);
    await runChecked(op, 40, "before the loss");
    device.destroy();
    await device.lost;
    const x = new Float32Array(65 * 32);
    for (let i = 0; i < 2; i++) {
      const e = await rejection(op.run(x, x, x), `run ${i} after the loss`);
      assert.equal(e.code, "DEVICE_LOST");
      assert.match(e.message, /caller's GPUDevice/);
    }
    assert.throws(
      () => rt.attention(LOSS_DENSE),
      (e: unknown) =>
        e instanceof DraftAttentionError && e.code === "DEVICE_LOST" &&
        /caller's GPUDevice/.test(e.message),
    );
    assert.equal(rt.device, device);
    rt.dispose();
    assert.equal(liveBuffers(device), 0, "buffers left on the caller's device");
  },
);

for (const backend of BACKENDS) {
  relTest(
    "dispose() of the op or the runtime during runs: each run settles, DISPOSED or a result",
    backend,
    async () => {
      const before = liveBuffers();
      for (const which of ["op", "runtime"] as const) {
        const rt = await openRuntime({ backend });
        const op = rt.draftAttention({ ...LOSS_DRAFT, frames: 4, height: 16, width: 16 });
        const n = op.spec.tokens * op.spec.heads * op.spec.headDim;
        const x = new Float32Array(n).fill(0.5);
        await op.run(x, x, x);
        const runs = [0, 1, 2].map(() =>
          op.run(x, x, x).then(
            (out) => ({ ok: true as const, out }),
            (e: unknown) => ({ ok: false as const, e }),
          )
        );
        await new Promise((r) => setTimeout(r, 2));
        if (which === "op") op.dispose();
        else rt.dispose();
        for (const r of await within(Promise.all(runs), 20_000, `runs around ${which}.dispose()`)) {
          if (r.ok) {
            assert.ok(r.out.every((y) => Math.abs(y - 0.5) < 1e-6), "a corrupted output");
          } else {
            assert.ok(r.e instanceof DraftAttentionError, `raw error ${r.e}`);
            assert.equal(r.e.code, "DISPOSED", r.e.message);
          }
        }
        const e = await rejection(op.lastMask(), "lastMask after dispose");
        assert.equal(e.code, "DISPOSED");
        rt.dispose();
      }
      assert.equal(liveBuffers(), before, "buffers left after dispose");
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Memory: limits before allocating, out-of-memory through the error scopes
// ---------------------------------------------------------------------------------------------

relTest(
  "beyond a binding or the buffer limit: TOO_LARGE before any allocation",
  "webgpu-only",
  async () => {
    for (const limits of ["adapter", "default"] as const) {
      const rt = await openRuntime({ backend: "webgpu", limits });
      const device = rt.device!;
      const max = device.limits.maxStorageBufferBindingSize;
      const tooLarge = [
        // One head of q: BHSD splits per head, so a head past the binding is the limit.
        () =>
          rt.attention({ tokens: Math.ceil(max / 256) + 1, heads: 1, headDim: 64, layout: "BHSD" }),
        // BSHD past the binding goes per head too (typed arrays, gathered on upload): a head.
        () => rt.attention({ tokens: Math.ceil(max / 256) + 1, heads: 4, headDim: 64 }),
        // The draft map of one head past the binding.
        () =>
          rt.draftAttention({
            frames: 1,
            height: 1,
            width: Math.ceil(Math.sqrt(max / 4)) + 1,
            pool: [1, 1],
            heads: 1,
            headDim: 4,
          }),
      ];
      for (const [i, make] of tooLarge.entries()) {
        const n = liveBuffers(device);
        assert.throws(make, (e: unknown) => {
          assert.ok(e instanceof DraftAttentionError, `case ${i}: ${e}`);
          assert.equal(e.code, "TOO_LARGE", e.message);
          return true;
        });
        assert.equal(liveBuffers(device), n, `case ${i} (${limits} limits) allocated buffers`);
      }
      rt.dispose();
    }
  },
);

/** Makes the next `count` out-of-memory scopes popped on `device` report an out-of-memory error. */
function injectOutOfMemory(device: GPUDevice, skip: number): () => void {
  const pop = device.popErrorScope;
  let n = 0;
  device.popErrorScope = function (this: GPUDevice) {
    const p = pop.call(this);
    // Scopes are pushed internal, out-of-memory, validation: every 3rd pop is out-of-memory.
    n++;
    if (n === skip * 3 + 2) return p.then(() => new GPUOutOfMemoryError("injected"));
    return p;
  };
  return () => {
    device.popErrorScope = pop;
  };
}

relTest(
  "out of GPU memory (injected into the error scopes) is TOO_LARGE, and nothing leaks",
  "webgpu-only",
  async () => {
    const rt = await openRuntime({ backend: "webgpu" });
    const device = rt.device!;
    const base = liveBuffers(device);
    // While creating an op: its first run answers TOO_LARGE; disposing frees what it made.
    let restore = injectOutOfMemory(device, 0);
    const failed = rt.draftAttention(LOSS_DRAFT);
    restore();
    const n = failed.spec.tokens * 2 * 16;
    const x = new Float32Array(n).fill(0.5);
    const e = await rejection(failed.run(x, x, x), "run of an op created out of memory");
    assert.equal(e.code, "TOO_LARGE", e.message);
    assert.equal(e.field, "device");
    assert.match(e.message, /out of memory/);
    failed.dispose();
    assert.equal(liveBuffers(device), base, "the failed op's buffers leaked");
    // During a run: that run answers TOO_LARGE, the next one is correct.
    const op = rt.draftAttention(LOSS_DRAFT);
    await runChecked(op, 50, "before the injected failure");
    restore = injectOutOfMemory(device, 0);
    const e2 = await rejection(op.run(x, x, x), "run out of memory");
    restore();
    assert.equal(e2.code, "TOO_LARGE", e2.message);
    await runChecked(op, 51, "after the injected failure");
    op.dispose();
    assert.equal(liveBuffers(device), base, "buffers leaked");
    rt.dispose();
  },
);

// ---------------------------------------------------------------------------------------------
// Concurrency: 64 runs of mixed geometries in flight on one runtime
// ---------------------------------------------------------------------------------------------

/** Small draft cases of different geometries; the concurrency test runs each with 8 seeds. */
function concurrencyDraft(
  name: string,
  grid: [number, number, number],
  extra: Partial<DraftCase>,
): DraftCase {
  return {
    name: `concurrency ${name}`,
    frames: grid[0],
    height: grid[1],
    width: grid[2],
    textTokens: 0,
    textPosition: "after",
    pool: [4, 8],
    heads: 2,
    headDim: 16,
    batch: 1,
    layout: "BSHD",
    dtype: "f32",
    sparsity: 0.5,
    seed: 1,
    ...extra,
  };
}

const CONCURRENT_DRAFTS: DraftCase[] = [
  concurrencyDraft("ragged text after", [2, 9, 13], { textTokens: 5 }),
  concurrencyDraft("f16 BHSD text before", [2, 7, 17], {
    textTokens: 3,
    textPosition: "before",
    layout: "BHSD",
    dtype: "f16",
  }),
  concurrencyDraft("batch 2", [1, 8, 16], { batch: 2, sparsity: 0.75 }),
  concurrencyDraft("one frame, pool 2x4", [1, 6, 10], { pool: [2, 4], headDim: 8 }),
];
const CONCURRENT_DENSE = [
  { tokens: 63, heads: 2, headDim: 16, layout: "BSHD", dtype: "f32" },
  { tokens: 97, heads: 1, headDim: 32, layout: "BHSD", dtype: "f16" },
  { tokens: 1, heads: 3, headDim: 8, layout: "BSHD", dtype: "f32" },
  { tokens: 130, heads: 1, headDim: 4, layout: "BHSD", dtype: "f32" },
] as const;
const RUNS_PER_OP = 8;

/** The 64 runs' cases (module-level objects: their references are computed once). */
const CONCURRENT_RUNS = {
  draft: CONCURRENT_DRAFTS.map((c, ci) =>
    Array.from({ length: RUNS_PER_OP }, (_, r) => ({ ...c, seed: 100 * ci + 11 * r + 1 }))
  ),
  dense: CONCURRENT_DENSE.map((c, ci) =>
    Array.from({ length: RUNS_PER_OP }, (_, r) => ({
      ...c,
      name: `concurrency dense ${ci}`,
      batch: 1,
      seed: 1000 * ci + r,
    }))
  ),
};

for (const backend of BACKENDS) {
  relTest(
    `${8 * RUNS_PER_OP} concurrent runs of 8 geometries on one runtime, all correct`,
    backend,
    async () => {
      const before = liveBuffers();
      const rt = await openRuntime({ backend });
      const jobs: { what: string; run: () => Promise<string | undefined> }[] = [];
      const ops: AttentionOp[] = [];
      for (const [ci, c] of CONCURRENT_DRAFTS.entries()) {
        const op = rt.draftAttention(draftOptions(c));
        ops.push(op);
        for (const rc of CONCURRENT_RUNS.draft[ci]) {
          const exp = prepareDraft(rc).runs[0];
          const what = `${c.name} seed ${exp.seed}`;
          jobs.push({
            what,
            run: async () => {
              const out = await op.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
              assertFinite(out, what);
              const { err } = maxAbsErr(out, exp.ref);
              return err <= exp.tol ? undefined : `${what}: err ${err} > tol ${exp.tol}`;
            },
          });
        }
      }
      for (const [ci, c] of CONCURRENT_DENSE.entries()) {
        const op = rt.attention(c);
        ops.push(op);
        for (const dc of CONCURRENT_RUNS.dense[ci]) {
          const prep = prepareDense(dc);
          const exp = prep.runs[0];
          const what = `dense ${JSON.stringify(c)} seed ${dc.seed}`;
          jobs.push({
            what,
            run: async () => {
              const out = await op.run(exp.inputs.q, exp.inputs.k, exp.inputs.v);
              assertFinite(out, what);
              const { err } = maxAbsErr(out, exp.ref);
              return err <= exp.tol ? undefined : `${what}: err ${err} > tol ${exp.tol}`;
            },
          });
        }
      }
      // Interleave the ops' runs, then start them all before awaiting any.
      const order = jobs.map((_, i) => i).sort((a, b) => (a % RUNS_PER_OP) - (b % RUNS_PER_OP));
      const t0 = performance.now();
      const results = await within(
        Promise.all(order.map((i) => jobs[i].run())),
        60_000,
        `${jobs.length} concurrent runs`,
      );
      const ms = performance.now() - t0;
      const failures = results.filter((r) => r !== undefined);
      assert.equal(jobs.length, 64);
      assert.deepEqual(failures, []);
      if (Deno.env.get("DRAFTATTN_VERBOSE")) {
        console.log(`${backend}: 64 runs in ${ms.toFixed(0)} ms`);
      }
      for (const op of ops) op.dispose();
      assert.equal(liveBuffers(), before, "GPU buffers not back to the baseline after dispose");
      rt.dispose();
      assert.equal(liveBuffers(), before);
    },
  );
}

Deno.test("firstNonFinite: the first NaN or infinity of f16 and f32 arrays, any offset", () => {
  const naive = (x: TensorArray) => x.findIndex((v) => !Number.isFinite(v));
  let seed = 7;
  const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const specials = [NaN, Infinity, -Infinity];
  // Finite extremes that must pass: the largest f16, the smallest subnormal, negative zero.
  const finite = [65504, -65504, 2 ** -24, -0];
  for (const Ctor of [Float16Array, Float32Array]) {
    for (let trial = 0; trial < 300; trial++) {
      const n = 1 + Math.floor(rand() * 40);
      const offset = Math.floor(rand() * 3);
      const x = new Ctor(n + offset).subarray(offset);
      for (let i = 0; i < n; i++) {
        x[i] = rand() < 0.3 ? finite[Math.floor(rand() * 4)] : (rand() - 0.5) * 100;
      }
      const bad = Math.floor(rand() * 4);
      for (let b = 0; b < bad; b++) x[Math.floor(rand() * n)] = specials[Math.floor(rand() * 3)];
      assert.equal(firstNonFinite(x), naive(x), `${Ctor.name} n=${n} offset=${offset}`);
    }
  }
});
