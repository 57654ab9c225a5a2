/**
 * The WebGPU backend's host side on the real adapter: info(), caller-owned buffers, splitting
 * an op into pieces that fit a binding, serialised runs, and every error a caller can cause
 * (INVALID_BUFFER, DISPOSED, DEVICE_LOST, TOO_LARGE) mapped to a DraftAttentionError.
 *
 * No adapter: a failure under CI=true, and elsewhere unless DRAFTATTN_SKIP_GPU=1 (then the
 * tests are listed as ignored with the reason). Never a silent pass.
 */
import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { buildPlan } from "../src/plan.ts";
import type { DenseSpec, DraftSpec, Geometry, TensorArray } from "../src/types.ts";
import { keepCount, maskConfig } from "../src/validate.ts";
import { createWebGpuBackend } from "../src/webgpu/backend.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { WebGpuOp } from "../src/webgpu/op.ts";
import { gpuSuite, readBuffer } from "./_gpu.ts";

const adapter = await navigator.gpu?.requestAdapter();

let shared: GPUDevice | undefined;
async function device(): Promise<GPUDevice> {
  shared ??= await adapter!.requestDevice();
  return shared;
}

const gpuTest = gpuSuite("webgpu backend", adapter);

class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  fill<T extends TensorArray>(a: T): T {
    for (let i = 0; i < a.length; i++) {
      this.#s = (Math.imul(this.#s, 1664525) + 1013904223) >>> 0;
      a[i] = this.#s / 2 ** 31 - 1;
    }
    return a;
  }
}

function inputs(spec: DenseSpec, seed: number): [TensorArray, TensorArray, TensorArray] {
  const n = spec.batch * spec.tokens * spec.heads * spec.headDim;
  const rng = new Rng(seed);
  const make = () => rng.fill(spec.dtype === "f16" ? new Float16Array(n) : new Float32Array(n));
  return [make(), make(), make()];
}

function draftSpec(
  geom: Geometry,
  rest: Partial<DraftSpec> = {},
): [DraftSpec, ReturnType<typeof buildPlan>] {
  const plan = buildPlan(geom);
  const sparsity = rest.sparsity ?? 0.5;
  const spec: Omit<DraftSpec, "mask"> = {
    batch: 1,
    tokens: plan.tokens,
    heads: 2,
    headDim: 16,
    layout: "BSHD",
    dtype: "f32",
    scale: 0.25,
    ...geom,
    sparsity,
    policy: "percentile",
    keep: keepCount(plan.g, sparsity),
    ...rest,
  };
  return [{ ...spec, mask: maskConfig(spec, plan.g) }, plan];
}

const GEOM: Geometry = {
  frames: 2,
  height: 9,
  width: 10,
  textTokens: 5,
  textPosition: "after",
  poolH: 4,
  poolW: 4,
};

function gpuBuffer(dev: GPUDevice, data: ArrayBufferView | number, usage?: number): GPUBuffer {
  const bytes = typeof data === "number" ? data : data.byteLength;
  const b = dev.createBuffer({
    size: Math.ceil(bytes / 4) * 4,
    usage: usage ?? (GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST),
  });
  if (typeof data !== "number") {
    dev.queue.writeBuffer(
      b,
      0,
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength) as Uint8Array<ArrayBuffer>,
    );
  }
  return b;
}

async function rejects(p: Promise<unknown>, code: string, field: string, text?: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DraftAttentionError, `not a DraftAttentionError: ${e}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.field, field, e.message);
    if (text) assert.match(e.message, text);
    return true;
  });
}

const asBytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

// ---------------------------------------------------------------------------------------------

gpuTest("info() names the adapter, reason, features and limits", async () => {
  const dev = await device();
  const backend = createWebGpuBackend({
    device: dev,
    adapterInfo: adapter!.info,
    reason: "because",
    features: ["shader-f16"],
  });
  const info = backend.info();
  assert.equal(info.backend, "webgpu");
  assert.equal(info.adapter, adapter!.info.description || info.adapter);
  assert.equal(info.reason, "because");
  assert.deepEqual(info.features, ["shader-f16"]);
  assert.equal(
    info.limits?.maxComputeWorkgroupStorageSize,
    dev.limits.maxComputeWorkgroupStorageSize,
  );
  assert.equal(info.limits?.maxStorageBufferBindingSize, dev.limits.maxStorageBufferBindingSize);
  backend.dispose();
});

// Pieces: a binding limit that holds one batch element (BSHD) or a couple of heads (BHSD) splits
// the op; the results must equal the unsplit op's bit for bit (same kernel, same order).
for (
  const [layout, dtype, maxBytes] of [
    ["BSHD", "f32", 40_000],
    ["BHSD", "f16", 13_000],
  ] as const
) {
  gpuTest(
    `pieces: ${layout} ${dtype} split by a ${maxBytes}-byte binding limit, run() and run(buffers)`,
    async () => {
      const dev = await device();
      const whole = new GpuContext(dev);
      const split = new GpuContext(dev, { maxStorageBufferBindingSize: maxBytes });
      const dense: DenseSpec = {
        batch: 3,
        tokens: 129,
        heads: 3,
        headDim: 16,
        layout,
        dtype,
        scale: 0.3,
      };
      const [draft, plan] = draftSpec(GEOM, { batch: 3, heads: 3, layout, dtype });
      for (const [spec, p] of [[dense, undefined], [draft, plan]] as const) {
        const a = new WebGpuOp(whole, spec, p, () => {});
        const b = new WebGpuOp(split, spec, p, () => {});
        assert.equal(a.pieceCount, 1);
        assert.ok(b.pieceCount >= 3, `${b.pieceCount} pieces`);
        const [q, k, v] = inputs(spec, 11);
        const want = await a.run(q, k, v);
        const got = await b.run(q, k, v);
        assert.deepEqual(asBytes(got), asBytes(want), `${p ? "draft" : "dense"} run()`);
        if (p) assert.deepEqual(await b.lastMask(), await a.lastMask());
        // Caller buffers: piece offsets are not multiples of the 256-byte alignment.
        const [qb, kb, vb] = [q, k, v].map((x) => gpuBuffer(dev, x));
        const out = gpuBuffer(dev, want.byteLength);
        await b.runBuffers({ q: qb, k: kb, v: vb, out });
        assert.deepEqual((await readBuffer(dev, out)).subarray(0, want.byteLength), asBytes(want));
        for (const x of [qb, kb, vb, out]) x.destroy();
        a.dispose();
        b.dispose();
      }
    },
  );
}

gpuTest("pieces submitted one by one: typed runs with maskEvery 2 match the whole op", async () => {
  const dev = await device();
  const whole = new GpuContext(dev);
  const split = new GpuContext(dev, { maxStorageBufferBindingSize: 16384 });
  const [spec, plan] = draftSpec(GEOM, { batch: 3, heads: 3, layout: "BHSD", maskEvery: 2 });
  const a = new WebGpuOp(whole, spec, plan, () => {});
  const b = new WebGpuOp(split, spec, plan, () => {});
  assert.ok(b.pieceCount >= 3, `${b.pieceCount} pieces`);
  // Runs 0 and 2 compute the mask, run 1 reuses run 0's: every piece must agree with that.
  for (const seed of [21, 22, 23]) {
    const [q, k, v] = inputs(spec, seed);
    const want = await a.run(q, k, v);
    const got = await b.run(q, k, v);
    assert.deepEqual(asBytes(got), asBytes(want), `run with seed ${seed}`);
    assert.deepEqual(await b.lastMask(), await a.lastMask(), `mask with seed ${seed}`);
  }
  a.dispose();
  b.dispose();
});

// BSHD beyond a binding: no binding range holds one head of interleaved heads, so typed-array
// runs upload per head (the op's buffers in BHSD order) and caller buffers get TOO_LARGE.
for (const [dtype, offset] of [["f16", 1], ["f32", 0]] as const) {
  gpuTest(
    `BSHD ${dtype} beyond a binding: run() goes per head, run(buffers) is TOO_LARGE` +
      (offset ? " (inputs at an odd element offset)" : ""),
    async () => {
      const dev = await device();
      const whole = new GpuContext(dev);
      // One batch element: 129 tokens x 3 heads x 16 dims; one head fits, three do not.
      const eb = dtype === "f16" ? 2 : 4;
      const split = new GpuContext(dev, { maxStorageBufferBindingSize: 129 * 16 * eb * 2 + 512 });
      const dense: DenseSpec = {
        batch: 2,
        tokens: 129,
        heads: 3,
        headDim: 16,
        layout: "BSHD",
        dtype,
        scale: 0.3,
      };
      const [draft, plan] = draftSpec(GEOM, { batch: 2, heads: 3, layout: "BSHD", dtype });
      for (const [spec, p] of [[dense, undefined], [draft, plan]] as const) {
        const a = new WebGpuOp(whole, spec, p, () => {});
        const b = new WebGpuOp(split, spec, p, () => {});
        assert.equal(a.pieceCount, 1);
        assert.ok(b.pieceCount > spec.batch, `${b.pieceCount} pieces: finer than batch elements`);
        // Two heads per piece: the middle piece holds the last head of one batch element and the
        // first of the next (copied as two runs of heads).
        if (!p) assert.equal(b.pieceCount, 3);
        const [q, k, v] = inputs(spec, 13).map((x) => {
          if (!offset) return x;
          // A view one element into its buffer: 2-byte aligned only (the 16-bit copy path).
          const Ctor = x.constructor as Float16ArrayConstructor;
          const y = new Ctor(x.length + 1).subarray(1);
          y.set(x as Float16Array);
          return y;
        });
        const want = await a.run(q, k, v);
        assert.deepEqual(asBytes(await b.run(q, k, v)), asBytes(want), `${p ? "draft" : "dense"}`);
        if (p) assert.deepEqual(await b.lastMask(), await a.lastMask());
        const [qb, kb, vb, out] = [q, k, v, q].map((x) => gpuBuffer(dev, x));
        await assert.rejects(b.runBuffers({ q: qb, k: kb, v: vb, out }), (e: unknown) => {
          assert.ok(e instanceof DraftAttentionError);
          assert.equal(e.code, "TOO_LARGE");
          assert.equal(e.field, "q");
          assert.match(e.message, /typed arrays/);
          assert.match(e.message, /BHSD/);
          return true;
        });
        for (const x of [qb, kb, vb, out]) x.destroy();
        a.dispose();
        b.dispose();
      }
    },
  );
}

gpuTest(
  "run({ q, k, v, out }) writes out without touching other bytes; runs are serialised",
  async () => {
    const dev = await device();
    const backend = createWebGpuBackend({ device: dev, reason: "t", features: [] });
    const [spec, plan] = draftSpec(GEOM, { layout: "BHSD" });
    const op = backend.draft(spec, plan);
    const [q, k, v] = inputs(spec, 5);
    const [q2, k2, v2] = inputs(spec, 6);
    // Two runs in flight at once, then a mask: each sees its own inputs.
    const [o1, o2] = await Promise.all([op.run(q, k, v), op.run(q2, k2, v2)]);
    const m2 = await op.lastMask();
    assert.deepEqual(asBytes(await op.run(q, k, v)), asBytes(o1));
    const m1 = await op.lastMask();
    assert.deepEqual(asBytes(await op.run(q2, k2, v2)), asBytes(o2));
    assert.deepEqual(await op.lastMask(), m2);
    assert.notDeepEqual(m1.mask, m2.mask);
    // A larger output buffer: the tail keeps its bytes.
    const bufs = [q, k, v].map((x) => gpuBuffer(dev, x));
    const tail = new Uint8Array(64).fill(0xab);
    const big = new Uint8Array(o1.byteLength + 64);
    big.set(tail, o1.byteLength);
    const out = gpuBuffer(dev, big);
    await op.runBuffers!({ q: bufs[0], k: bufs[1], v: bufs[2], out });
    const back = await readBuffer(dev, out);
    assert.deepEqual(back.subarray(0, o1.byteLength), asBytes(o1));
    assert.deepEqual(back.subarray(o1.byteLength), tail);
    assert.deepEqual(await op.lastMask(), m1);
    for (const b of [...bufs, out]) b.destroy();
    backend.dispose();
  },
);

gpuTest(
  "runs on caller buffers back to back: submitted without waiting, each settles with its own errors",
  async () => {
    const dev = await device();
    const backend = createWebGpuBackend({ device: dev, reason: "t", features: [] });
    const [spec, plan] = draftSpec(GEOM, { layout: "BSHD", maskEvery: 2 });
    const op = backend.draft(spec, plan);
    const [q, k, v] = inputs(spec, 7);
    const [q2, k2, v2] = inputs(spec, 8);
    // The typed runs of another op give the expected outputs (same mask schedule: runs 0, 2
    // compute the mask, run 1 reuses run 0's).
    const ref = backend.draft(spec, plan);
    const want = [await ref.run(q, k, v), await ref.run(q2, k2, v2), await ref.run(q, k, v)];
    const a = [q, k, v].map((x) => gpuBuffer(dev, x));
    const b = [q2, k2, v2].map((x) => gpuBuffer(dev, x));
    const outs = [0, 1, 2, 3].map(() => gpuBuffer(dev, want[0].byteLength));
    const dead = gpuBuffer(dev, want[0].byteLength);
    dead.destroy();
    // Four runs issued at once; the third has a destroyed q and fails alone.
    const runs = [
      op.runBuffers!({ q: a[0], k: a[1], v: a[2], out: outs[0] }),
      op.runBuffers!({ q: b[0], k: b[1], v: b[2], out: outs[1] }),
      op.runBuffers!({ q: dead, k: a[1], v: a[2], out: outs[2] }),
      op.runBuffers!({ q: a[0], k: a[1], v: a[2], out: outs[3] }),
    ];
    const settled = await Promise.allSettled(runs);
    assert.deepEqual(settled.map((r) => r.status), [
      "fulfilled",
      "fulfilled",
      "rejected",
      "fulfilled",
    ]);
    const why = (settled[2] as PromiseRejectedResult).reason;
    assert.ok(
      why instanceof DraftAttentionError && why.code === "INVALID_BUFFER" && why.field === "q",
    );
    assert.deepEqual(
      (await readBuffer(dev, outs[0])).subarray(0, want[0].byteLength),
      asBytes(want[0]),
    );
    assert.deepEqual(
      (await readBuffer(dev, outs[1])).subarray(0, want[1].byteLength),
      asBytes(want[1]),
    );
    // The failed run took its turn in the schedule (it was recorded) but WebGPU ran none of
    // its command buffer: the fourth run reuses the mask of the first, on the same inputs, so
    // its output is the first's.
    assert.deepEqual(
      (await readBuffer(dev, outs[3])).subarray(0, want[0].byteLength),
      asBytes(want[0]),
    );
    for (const x of [...a, ...b, ...outs]) x.destroy();
    backend.dispose();
  },
);

gpuTest("INVALID_BUFFER: small, no STORAGE, mapped, aliased, destroyed, other device", async () => {
  const dev = await device();
  const other = await adapter!.requestDevice();
  const backend = createWebGpuBackend({ device: dev, reason: "t", features: [] });
  const spec: DenseSpec = {
    batch: 1,
    tokens: 33,
    heads: 2,
    headDim: 8,
    layout: "BSHD",
    dtype: "f16",
    scale: 1,
  };
  const bytes = 33 * 2 * 8 * 2;
  const op = backend.dense(spec);
  const ok = () => gpuBuffer(dev, bytes);
  const run = (x: Partial<Record<"q" | "k" | "v" | "out", GPUBuffer>>) =>
    op.runBuffers!({ q: ok(), k: ok(), v: ok(), out: ok(), ...x });
  await rejects(
    run({ k: gpuBuffer(dev, bytes - 8) }),
    "INVALID_BUFFER",
    "k",
    new RegExp(`${bytes - 8}.*${bytes}`),
  );
  await rejects(
    run({ out: gpuBuffer(dev, bytes, GPUBufferUsage.COPY_DST) }),
    "INVALID_BUFFER",
    "out",
    /STORAGE/,
  );
  const mapped = dev.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.STORAGE,
    mappedAtCreation: true,
  });
  await rejects(run({ v: mapped }), "INVALID_BUFFER", "v", /mapped/);
  const q = ok();
  await rejects(run({ q, out: q }), "INVALID_BUFFER", "out", /same GPUBuffer as q/);
  const dead = ok();
  dead.destroy();
  await rejects(run({ q: dead }), "INVALID_BUFFER", "q", /destroyed/);
  await rejects(run({ v: gpuBuffer(other, bytes) }), "INVALID_BUFFER", "v", /another device/);
  // The op still works afterwards.
  await run({});
  other.destroy();
  backend.dispose();
});

gpuTest("DISPOSED: op and backend used after dispose()", async () => {
  const backend = createWebGpuBackend({ device: await device(), reason: "t", features: [] });
  const [spec, plan] = draftSpec(GEOM);
  const op = backend.draft(spec, plan);
  const [q, k, v] = inputs(spec, 1);
  await op.run(q, k, v);
  op.dispose();
  await rejects(op.run(q, k, v), "DISPOSED", "op");
  await rejects(op.lastMask(), "DISPOSED", "op");
  const op2 = backend.draft(spec, plan);
  backend.dispose();
  await rejects(op2.run(q, k, v), "DISPOSED", "op");
  assert.throws(
    () => backend.dense(spec),
    (e: unknown) => e instanceof DraftAttentionError && e.code === "DISPOSED",
  );
});

gpuTest("lastMask() before any run is empty; dense ops have no mask", async () => {
  const backend = createWebGpuBackend({ device: await device(), reason: "t", features: [] });
  const [spec, plan] = draftSpec(GEOM, { batch: 2 });
  const m = await backend.draft(spec, plan).lastMask();
  assert.equal(m.g, plan.g);
  assert.equal(m.mask.length, 2 * 2 * plan.g * plan.g);
  assert.equal(m.density, 0);
  const dense = backend.dense(spec) as WebGpuOp;
  await rejects(dense.lastMask(), "UNSUPPORTED", "op");
  backend.dispose();
});

gpuTest("DEVICE_LOST: runs on a destroyed device, also one already in flight", async () => {
  const dev = await adapter!.requestDevice();
  const backend = createWebGpuBackend({ device: dev, reason: "t", features: [] });
  const [spec, plan] = draftSpec(GEOM);
  const op = backend.draft(spec, plan);
  const [q, k, v] = inputs(spec, 2);
  await op.run(q, k, v);
  const inFlight = op.run(q, k, v);
  dev.destroy();
  await rejects(inFlight, "DEVICE_LOST", "device");
  await rejects(op.run(q, k, v), "DEVICE_LOST", "device");
  assert.throws(
    () => backend.dense(spec),
    (e: unknown) => e instanceof DraftAttentionError && e.code === "DEVICE_LOST",
  );
  backend.dispose();
});

gpuTest("split limits: workgroup dispatch beyond maxComputeWorkgroupsPerDimension", async () => {
  // At most 9 x 9 workgroups: dense 3 items x 9 heads = 27 (3 rows of 9), the draft op's
  // lists 4 x 18 = 72, and so on; every kernel linearises the 2-D grid and skips the excess.
  const dev = await device();
  const ctx = new GpuContext(dev, { maxComputeWorkgroupsPerDimension: 9 });
  const spec: DenseSpec = {
    batch: 3,
    tokens: 65,
    heads: 3,
    headDim: 8,
    layout: "BHSD",
    dtype: "f32",
    scale: 1,
  };
  const [q, k, v] = inputs(spec, 9);
  const a = new WebGpuOp(new GpuContext(dev), spec, undefined, () => {});
  const b = new WebGpuOp(ctx, spec, undefined, () => {});
  assert.deepEqual(asBytes(await b.run(q, k, v)), asBytes(await a.run(q, k, v)));
  const [dspec, plan] = draftSpec(GEOM, { batch: 2 });
  const [dq, dk, dv] = inputs(dspec, 9);
  const c = new WebGpuOp(new GpuContext(dev), dspec, plan, () => {});
  const d = new WebGpuOp(ctx, dspec, plan, () => {});
  assert.deepEqual(asBytes(await d.run(dq, dk, dv)), asBytes(await c.run(dq, dk, dv)));
  assert.deepEqual(await d.lastMask(), await c.lastMask());
  for (const x of [a, b, c, d]) x.dispose();
});
