/**
 * The in-memory tensor shared by the `.npy` and `.safetensors` readers and writers.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type { DType, TensorArray } from "./types.ts";

/** A dense C-order (row-major) tensor of f32 or f16 values. */
export interface Tensor {
  /** Element type: `"f32"` or `"f16"`. */
  dtype: DType;
  /** Dimensions, outermost first; `[]` is a scalar (one element). */
  shape: number[];
  /** `product(shape)` values: a `Float32Array` for `"f32"`, a `Float16Array` for `"f16"`. */
  data: TensorArray;
}

/** Most dimensions a tensor file may declare (NumPy's own limit is 64). */
export const MAX_RANK = 64;

/** Throws the `INVALID_INPUT` error every tensor-file problem becomes. */
export function invalid(field: string, detail: string): never {
  throw new DraftAttentionError("INVALID_INPUT", field, detail);
}

/** Bytes per element of a dtype. */
export function itemSize(dtype: DType): number {
  return dtype === "f16" ? 2 : 4;
}

/**
 * Elements of a shape, or an error when a dimension is not a safe integer >= 0 or the product
 * (times the item size) leaves the safe-integer range.
 */
export function elementCount(field: string, shape: readonly unknown[], dtype: DType): number {
  if (shape.length > MAX_RANK) {
    invalid(field, `shape has ${shape.length} dimensions; at most ${MAX_RANK} are supported`);
  }
  let n = 1;
  for (const d of shape) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      invalid(field, `shape dimensions must be integers >= 0, got ${describeValue(d)}`);
    }
    n *= d;
    if (n * itemSize(dtype) > Number.MAX_SAFE_INTEGER) {
      invalid(field, `shape ${describeValue(shape)} has too many elements`);
    }
  }
  return n;
}

/** Copies `bytes[begin, end)` into a fresh, aligned typed array of `dtype`. */
export function copyData(bytes: Uint8Array, begin: number, end: number, dtype: DType): TensorArray {
  // slice() copies into a new ArrayBuffer at offset 0, so the view is always aligned, whatever
  // the header length was. Every platform Deno runs on is little-endian, like the files.
  const buffer = bytes.slice(begin, end).buffer;
  return dtype === "f16" ? new Float16Array(buffer) : new Float32Array(buffer);
}

/** Checks a tensor about to be written; returns its element count. */
export function checkTensor(field: string, tensor: Tensor): number {
  if (typeof tensor !== "object" || tensor === null) {
    invalid(field, `must be a tensor { dtype, shape, data }, got ${describeValue(tensor)}`);
  }
  const { dtype, shape, data } = tensor;
  if (dtype !== "f32" && dtype !== "f16") {
    invalid(field, `dtype must be "f32" or "f16", got ${describeValue(dtype)}`);
  }
  if (!Array.isArray(shape)) invalid(field, `shape must be an array, got ${describeValue(shape)}`);
  const n = elementCount(field, shape, dtype);
  const want = dtype === "f16" ? Float16Array : Float32Array;
  if (!(data instanceof want)) {
    invalid(field, `data must be a ${want.name} for dtype "${dtype}", got ${describeValue(data)}`);
  }
  if (data.length !== n) {
    invalid(
      field,
      `data holds ${data.length} elements but shape ${describeValue(shape)} needs ${n}`,
    );
  }
  return n;
}

/** The bytes of a typed array's view (no copy). */
export function bytesOf(data: TensorArray): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
