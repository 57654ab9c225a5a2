/**
 * Element types of tensor files (`.npy`, `.safetensors`) and their conversion to the f32 / f16
 * tensors the operator takes.
 *
 * - bf16 -> f32 is exact: a bf16 value is the top half of an f32 (shift left by 16 bits).
 * - bf16 / f32 / f64 -> f16 and f64 -> f32 round to nearest, ties to even, once, from the exact
 *   value: a `Float16Array` / `Float32Array` store does exactly that (ECMAScript's ToFloat16 /
 *   ToFloat32 round the double straight to the target, never through another format).
 * - A finite value that becomes an infinity on the way (beyond 65,504 into f16, beyond about
 *   3.4e38 into f32) is an `INVALID_INPUT` error naming the value and its index, so that no
 *   overflow passes silently (run() would reject the infinity anyway, with a less useful
 *   message). NaN and infinities in the file are kept as they are; run() rejects them with their
 *   coordinates.
 *
 * @module
 */
import { invalid } from "./_tensor.ts";
import type { DType, TensorArray } from "./types.ts";

/** What a tensor file may hold: the operator's f32 and f16, plus bf16 and f64 (converted). */
export type FileDType = DType | "bf16" | "f64";

/** Bytes per element of a file dtype. */
export function fileItemSize(dtype: FileDType): number {
  return dtype === "f64" ? 8 : dtype === "f32" ? 4 : 2;
}

/** The dtype a file's tensor is read as when the caller names none: f16 stays, the rest f32. */
export function defaultTarget(dtype: FileDType): DType {
  return dtype === "f16" ? "f16" : "f32";
}

/**
 * Converts `bytes[begin, end)` (little-endian elements of `from`) into a fresh, aligned typed
 * array of `to`. `field` names the tensor in errors.
 */
export function convertData(
  args: {
    bytes: Uint8Array;
    begin: number;
    end: number;
    from: FileDType;
    to: DType;
    field: string;
  },
): TensorArray {
  const { bytes, begin, end, from, to, field } = args;
  // slice() copies into a new ArrayBuffer at offset 0: the views below are always aligned.
  const buffer = bytes.slice(begin, end).buffer;
  if (from === to) return to === "f16" ? new Float16Array(buffer) : new Float32Array(buffer);
  let wide: Float32Array | Float64Array | Float16Array;
  if (from === "bf16") {
    const u16 = new Uint16Array(buffer);
    const u32 = new Uint32Array(u16.length);
    for (let i = 0; i < u16.length; i++) u32[i] = u16[i] << 16;
    const f32 = new Float32Array(u32.buffer);
    if (to === "f32") return f32;
    wide = f32;
  } else if (from === "f64") wide = new Float64Array(buffer);
  else if (from === "f32") wide = new Float32Array(buffer);
  else wide = new Float16Array(buffer);
  const out = to === "f16" ? new Float16Array(wide.length) : new Float32Array(wide.length);
  out.set(wide);
  // Overflow check: an infinity in the output whose source was finite.
  for (let i = 0; i < out.length; i++) {
    const y = out[i];
    if ((y === Infinity || y === -Infinity) && Number.isFinite(wide[i])) {
      invalid(
        field,
        `value ${wide[i]} at index ${i} overflows ${to} (largest finite ${
          to === "f16" ? "65504); read the file as f32 instead" : "3.4028234663852886e+38)"
        }`,
      );
    }
  }
  return out;
}
