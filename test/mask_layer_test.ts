/**
 * Mask reuse across transformer layers (`maskEvery > 1`), on both backends: one op run for two
 * layers applies the first layer's mask to the second (the silent bug), a run that names its
 * `layer` is rejected instead, and one op per layer keeps each layer's own mask.
 *
 * @module
 */
import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { openRuntime, type Runtime } from "../src/runtime.ts";
import { generateWorkload, type Workload } from "../src/workload.ts";
import type { BackendKind, TensorArray } from "../src/types.ts";
import { gpuSuite } from "./_gpu.ts";

const GEOM = { frames: 2, height: 16, width: 32, heads: 2, headDim: 32 };
const OPTIONS = { ...GEOM, sparsity: 0.75, maskEvery: 3 };
/** Two "layers": inputs whose masks differ (checked below). */
const LAYERS: Workload[] = [11, 12].map((seed) => generateWorkload({ ...GEOM, seed }));

function rejectsLayer(e: unknown, detail: RegExp): boolean {
  assert.ok(e instanceof DraftAttentionError, `not a DraftAttentionError: ${e}`);
  assert.equal(e.code, "INVALID_INPUT");
  assert.equal(e.field, "layer");
  assert.match(e.message, detail);
  return true;
}

async function story(rt: Runtime): Promise<void> {
  const [x0, x1] = LAYERS;
  // Each layer's own mask and output, from a fresh op (the mask computed on the run).
  const own: { mask: Uint8Array; out: TensorArray }[] = [];
  for (const x of LAYERS) {
    const op = rt.draftAttention(OPTIONS);
    const out = await op.run(x.q, x.k, x.v);
    own.push({ mask: (await op.lastMask()).mask, out });
    op.dispose();
  }
  assert.notDeepEqual(own[0].mask, own[1].mask, "the two layers need different masks");

  // The bug the layer id guards against: no layer named, layer 1 silently gets layer 0's mask.
  const shared = rt.draftAttention(OPTIONS);
  await shared.run(x0.q, x0.k, x0.v);
  await shared.run(x1.q, x1.k, x1.v);
  assert.deepEqual((await shared.lastMask()).mask, own[0].mask);
  shared.dispose();

  // Named layers: the reuse is rejected before anything runs, and does not advance the schedule.
  const op = rt.draftAttention(OPTIONS);
  await op.run(x0.q, x0.k, x0.v, { layer: 0 }); // computes (run 0 of 3)
  await assert.rejects(
    op.run(x1.q, x1.k, x1.v, { layer: 1 }),
    (e) => rejectsLayer(e, /1 would reuse the block mask computed for layer 0 .*one op per layer/),
  );
  const again = await op.run(x0.q, x0.k, x0.v, { layer: 0 }); // reuses (run 1)
  assert.deepEqual(again, own[0].out, "layer 0 reusing its own mask: the same output");
  await op.run(x0.q, x0.k, x0.v); // no layer named: not checked (run 2)
  // Run 3 computes a new mask, so any layer may take the op over.
  await op.run(x1.q, x1.k, x1.v, { layer: 1 });
  assert.deepEqual((await op.lastMask()).mask, own[1].mask);
  await assert.rejects(
    op.run(x0.q, x0.k, x0.v, { layer: 0 }),
    (e) => rejectsLayer(e, /computed for layer 1/),
  );
  await assert.rejects(
    op.run(x0.q, x0.k, x0.v, { layer: -1 }),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_OPTION" && e.field === "layer",
  );
  op.dispose();

  // A mask computed by a run that named no layer is not handed to a named one either.
  const anon = rt.draftAttention(OPTIONS);
  await anon.run(x0.q, x0.k, x0.v);
  await assert.rejects(
    anon.run(x0.q, x0.k, x0.v, { layer: 0 }),
    (e) => rejectsLayer(e, /computed for a run that named no layer/),
  );
  anon.dispose();

  // One op per layer, interleaved as a denoising loop runs them: each keeps its own mask.
  const ops = LAYERS.map(() => rt.draftAttention(OPTIONS));
  for (let step = 0; step < 3; step++) {
    for (let l = 0; l < 2; l++) {
      const x = LAYERS[l];
      const out = await ops[l].run(x.q, x.k, x.v, { layer: l });
      assert.deepEqual(out, own[l].out, `step ${step} layer ${l}`);
      assert.deepEqual((await ops[l].lastMask()).mask, own[l].mask);
    }
  }
  for (const o of ops) o.dispose();

  // maskEvery 1 computes on every run: any layer goes.
  const every = rt.draftAttention({ ...OPTIONS, maskEvery: 1 });
  await every.run(x0.q, x0.k, x0.v, { layer: 0 });
  await every.run(x1.q, x1.k, x1.v, { layer: 1 });
  every.dispose();
}

Deno.test("mask reuse across layers (wasm): layer ids checked, one op per layer", async () => {
  const rt = await openRuntime({ backend: "wasm", threads: 1 });
  try {
    await story(rt);
  } finally {
    rt.dispose();
  }
});

const adapter = await navigator.gpu?.requestAdapter();
gpuSuite("mask reuse across layers", adapter)(
  "webgpu: layer ids checked on typed arrays and on GPU buffers",
  async () => {
    const rt = await openRuntime({ backend: "webgpu" as BackendKind });
    try {
      await story(rt);
      // GPU buffers: the layer travels in the args object.
      const device = rt.device!;
      const [x0, x1] = LAYERS;
      const U = GPUBufferUsage;
      const buf = (x?: TensorArray) => {
        const b = device.createBuffer({
          size: x0.q.byteLength,
          usage: U.STORAGE | U.COPY_DST | U.COPY_SRC,
        });
        if (x) device.queue.writeBuffer(b, 0, x as Float32Array<ArrayBuffer>);
        return b;
      };
      const op = rt.draftAttention(OPTIONS);
      const out = buf();
      const b0 = { q: buf(x0.q), k: buf(x0.k), v: buf(x0.v), out };
      const b1 = { q: buf(x1.q), k: buf(x1.k), v: buf(x1.v), out };
      await op.run({ ...b0, layer: 0 });
      await assert.rejects(
        op.run({ ...b1, layer: 1 }),
        (e) => rejectsLayer(e, /computed for layer 0/),
      );
      await op.run({ ...b0, layer: 0 });
      op.dispose();
    } finally {
      rt.dispose();
    }
  },
);
