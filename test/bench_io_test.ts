/**
 * The bench's choice of GPU buffers or typed arrays (bench/_gpu_io.ts) against the op's own
 * rule: on WebGPU's default limits (the real device, llvmpipe here), a BSHD batch element beyond
 * a binding makes `run({ q, k, v, out })` answer `TOO_LARGE` (the crash of
 * `bench --shape wan-480p --dtype f32 --limits default`), and `chooseIo` says "typed" for
 * exactly those shapes.
 *
 * @module
 */
import assert from "node:assert/strict";
import { chooseIo } from "../bench/_gpu_io.ts";
import { DraftAttentionError } from "../src/errors.ts";
import { openRuntime } from "../src/runtime.ts";
import type { DType, Layout } from "../src/types.ts";
import { gpuSuite } from "./_gpu.ts";

const DEFAULT_LIMITS = {
  maxBufferSize: 268_435_456,
  maxStorageBufferBindingSize: 134_217_728,
  minStorageBufferOffsetAlignment: 256,
};
const WAN = { batch: 1, tokens: 32_760, heads: 12, headDim: 128 };

Deno.test("bench io: buffers unless a tensor or a BSHD batch element cannot be bound", () => {
  const pick = (dtype: DType, layout: Layout, o: Partial<typeof WAN> = {}) =>
    chooseIo({ ...WAN, ...o, dtype, layout, limits: DEFAULT_LIMITS, want: "buffers" });
  // 32,760 x 12 x 128 x 4 = 201,277,440 B: under maxBufferSize, over a binding.
  assert.deepEqual(pick("f32", "BSHD"), {
    io: "typed",
    reason: "a BSHD batch element (201277440 B) exceeds a binding (134217472 B)",
  });
  assert.deepEqual(pick("f16", "BSHD"), { io: "buffers" }); // 100.6 MB
  assert.deepEqual(pick("f32", "BHSD"), { io: "buffers" }); // split per head
  assert.equal(pick("f32", "BHSD", { batch: 2 }).io, "typed"); // 402 MB > maxBufferSize
  assert.match(pick("f32", "BHSD", { batch: 2 }).reason!, /exceeds maxBufferSize/);
  // Adapter limits of an H200 (4 GiB bindings): buffers.
  const big = { ...DEFAULT_LIMITS, maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: 2 ** 32 };
  assert.equal(
    chooseIo({ ...WAN, dtype: "f32", layout: "BSHD", limits: big, want: "buffers" }).io,
    "buffers",
  );
  assert.equal(
    chooseIo({ ...WAN, dtype: "f16", layout: "BSHD", limits: big, want: "typed" }).io,
    "typed",
  );
});

const adapter = await navigator.gpu?.requestAdapter();
gpuSuite("bench io", adapter)(
  "the op rejects BSHD buffers exactly where chooseIo says typed",
  async () => {
    const rt = await openRuntime({ backend: "webgpu", limits: "default" });
    try {
      const device = rt.device!;
      const limits = device.limits;
      assert.equal(limits.maxStorageBufferBindingSize, DEFAULT_LIMITS.maxStorageBufferBindingSize);
      // Buffers too small for any of these tensors: the op's first check decides the answer.
      const tiny = () => device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
      const bufs = { q: tiny(), k: tiny(), v: tiny(), out: tiny() };
      const cases: [DType, Layout, number][] = [
        ["f32", "BSHD", 32_760], // Wan 480p f32: typed
        ["f16", "BSHD", 32_760], // buffers
        ["f32", "BSHD", 21_846], // 134,221,824 B per batch element: just over a binding
        ["f32", "BSHD", 21_845], // 134,215,680 B: just under
        ["f32", "BHSD", 32_760], // per head: buffers
      ];
      for (const [dtype, layout, tokens] of cases) {
        const spec = { ...WAN, tokens, dtype, layout };
        const choice = chooseIo({ ...spec, limits, want: "buffers" });
        const op = rt.attention(spec);
        try {
          await assert.rejects(op.run(bufs), (e: unknown) => {
            assert.ok(e instanceof DraftAttentionError);
            const bshdTooLarge = e.code === "TOO_LARGE" && e.field === "q";
            assert.equal(
              bshdTooLarge,
              choice.io === "typed",
              `${dtype} ${layout} ${tokens}: op says ${e.code} (${e.message}), chooseIo ${choice.io}`,
            );
            if (!bshdTooLarge) assert.equal(e.code, "INVALID_BUFFER"); // too small, as made
            return true;
          });
        } finally {
          op.dispose();
        }
      }
      for (const b of Object.values(bufs)) b.destroy();
    } finally {
      rt.dispose();
    }
  },
);
