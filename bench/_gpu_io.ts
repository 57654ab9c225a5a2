/**
 * How a GPU bench row feeds the op: caller `GPUBuffer`s (no upload or readback timed) or typed
 * arrays (`op.run(q, k, v)`: upload, every piece, readback). Buffers are used unless they cannot
 * work on this device:
 * - a tensor larger than `maxBufferSize` fits no buffer at all;
 * - in BSHD, a batch element larger than one binding (less the offset-alignment slack the op
 *   keeps, src/webgpu/op.ts) cannot be split, because its heads are interleaved: the op answers
 *   `TOO_LARGE` for such GPU buffers and takes typed arrays per head instead (gathered on the
 *   host). Wan 480p in f32 under WebGPU's default limits: 201 MB per tensor (32,760 x 12 x 128 x
 *   4 bytes) against 128 MiB bindings, under the 256 MiB buffer limit; this bench used to create
 *   buffers for it and crash on the op's `TOO_LARGE`.
 *
 * @module
 */
import type { DType, Layout } from "../src/types.ts";

/** The device limits that decide. */
export interface IoLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  minStorageBufferOffsetAlignment: number;
}

/** The io of a row and, where buffers were asked for but cannot work, why. */
export interface IoChoice {
  io: "buffers" | "typed";
  reason?: string;
}

/**
 * Chooses the io of a row.
 *
 * @example
 * ```ts
 * import { chooseIo } from "./_gpu_io.ts";
 * const limits = {
 *   maxBufferSize: 2 ** 28,
 *   maxStorageBufferBindingSize: 2 ** 27,
 *   minStorageBufferOffsetAlignment: 256,
 * };
 * const wan = { batch: 1, tokens: 32760, heads: 12, headDim: 128, layout: "BSHD" as const };
 * console.assert(chooseIo({ ...wan, dtype: "f32", limits, want: "buffers" }).io === "typed");
 * console.assert(chooseIo({ ...wan, dtype: "f16", limits, want: "buffers" }).io === "buffers");
 * ```
 */
export function chooseIo(args: {
  batch: number;
  tokens: number;
  heads: number;
  headDim: number;
  layout: Layout;
  dtype: DType;
  limits: IoLimits;
  want: "buffers" | "typed";
}): IoChoice {
  const { batch, tokens, heads, headDim, layout, dtype, limits, want } = args;
  if (want === "typed") return { io: "typed" };
  const element = tokens * heads * headDim * (dtype === "f16" ? 2 : 4);
  const bytes = batch * element;
  if (bytes > limits.maxBufferSize) {
    return {
      io: "typed",
      reason: `a tensor (${bytes} B) exceeds maxBufferSize ${limits.maxBufferSize}`,
    };
  }
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) -
    limits.minStorageBufferOffsetAlignment;
  if (layout === "BSHD" && element > binding) {
    return {
      io: "typed",
      reason: `a BSHD batch element (${element} B) exceeds a binding (${binding} B)`,
    };
  }
  return { io: "buffers" };
}
