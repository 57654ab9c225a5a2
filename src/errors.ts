/**
 * The one error type of draftattn. Every rejection a caller can cause carries a stable `code`
 * and names the offending `field` (and its value) in the message.
 *
 * @module
 */

/** Stable error codes; new codes may be added, existing ones never change meaning. */
export type DraftAttentionErrorCode =
  /** An option has a wrong value: not a positive integer, out of range, NaN, unknown enum. */
  | "INVALID_OPTION"
  /** A valid request this build or backend does not support (headDim 260, dtype "bf16"). */
  | "UNSUPPORTED"
  /** A `run()` input has the wrong type or length, or holds a NaN or an infinity. */
  | "INVALID_INPUT"
  /** A `GPUBuffer` is too small, destroyed, from another device or lacks a usage flag. */
  | "INVALID_BUFFER"
  /** The op or runtime was used after `dispose()`. */
  | "DISPOSED"
  /** The requested backend is not available here (no WebGPU adapter, for instance). */
  | "NO_BACKEND"
  /** The GPU device was lost or destroyed. */
  | "DEVICE_LOST"
  /** WebGPU reported a validation or internal error (out of memory is `TOO_LARGE`). */
  | "GPU_ERROR"
  /** A WebAssembly worker thread failed (a trap) or died; the run was abandoned. */
  | "WORKER_ERROR"
  /** The request exceeds a limit of the device, the GPU memory left or WebAssembly memory. */
  | "TOO_LARGE"
  /** A model profile name that does not exist. */
  | "UNKNOWN_MODEL";

/**
 * Error thrown (or rejected with) by every draftattn API.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DraftAttentionError } from "./errors.ts";
 * const e = new DraftAttentionError("INVALID_OPTION", "heads", "must be a positive integer, got 0");
 * assert.equal(e.message, "Invalid heads: must be a positive integer, got 0");
 * ```
 */
export class DraftAttentionError extends Error {
  /** Stable machine-readable code. */
  readonly code: DraftAttentionErrorCode;
  /** The option, input or resource at fault (e.g. `"heads"`, `"q"`, `"device"`). */
  readonly field: string;

  /**
   * Builds the error; the message reads `Invalid <field>: <detail>`.
   *
   * @param code Stable machine-readable code.
   * @param field The option, input or resource at fault.
   * @param detail What is wrong, e.g. `"must be a positive integer, got 0"`.
   * @param options Standard `Error` options (`cause`).
   */
  constructor(
    code: DraftAttentionErrorCode,
    field: string,
    detail: string,
    options?: ErrorOptions,
  ) {
    super(`Invalid ${field}: ${detail}`, options);
    this.name = "DraftAttentionError";
    this.code = code;
    this.field = field;
  }
}

/** `%TypedArray%.prototype`, whose getters read a typed array's internal slots. */
const TYPED_ARRAY = Object.getPrototypeOf(Uint8Array.prototype) as object;
const getterOf = (key: PropertyKey) =>
  Object.getOwnPropertyDescriptor(TYPED_ARRAY, key)!.get! as (this: unknown) => unknown;
const TAG = getterOf(Symbol.toStringTag);
const LENGTH = getterOf("length");
const BUFFER = getterOf("buffer");
const BYTE_OFFSET = getterOf("byteOffset");

/** What a typed array really holds, read from its internal slots. */
export interface ArrayView {
  /** Constructor name of the array's kind (`"Float32Array"`, ...), whatever its class says. */
  name: string;
  /** Elements (0 once its buffer is detached). */
  length: number;
  buffer: ArrayBufferLike;
  byteOffset: number;
}

/**
 * The internal slots of a typed array, or undefined for anything else (a `Proxy` around a
 * typed array, a `DataView`, an object posing as one). Never throws and never runs caller code:
 * `%TypedArray%.prototype`'s getters ignore own properties such as an overridden `length` and
 * do not pass through proxies, so what this returns is what the memory holds.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { arrayView } from "./errors.ts";
 * const x = new Float32Array(4);
 * Object.defineProperty(x, "length", { value: 1000 });
 * assert.ok(arrayView(x)!.length === 4);
 * assert.ok(arrayView(new Proxy(x, {})) === undefined);
 * ```
 */
export function arrayView(value: unknown): ArrayView | undefined {
  // ArrayBuffer.isView does not see through proxies; the tag getter answers undefined for a
  // DataView.
  if (!ArrayBuffer.isView(value)) return undefined;
  const name = TAG.call(value);
  if (typeof name !== "string") return undefined;
  return {
    name,
    length: LENGTH.call(value) as number,
    buffer: BUFFER.call(value) as ArrayBufferLike,
    byteOffset: BYTE_OFFSET.call(value) as number,
  };
}

/**
 * Formats a value for an error message: strings quoted, arrays and objects summarised. Never
 * throws: a proxy whose traps throw, or a revoked one, reads "an unreadable object".
 */
export function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value == null) {
    return String(value);
  }
  if (typeof value === "bigint") return `${value}n`;
  const view = arrayView(value);
  if (view) return `${view.name}(${view.length})`;
  try {
    if (Array.isArray(value)) {
      return value.length > 64
        ? `an Array(${value.length})`
        : `[${value.map(describeValue).join(", ")}]`;
    }
    if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
    const name = (value as object).constructor?.name;
    return typeof name === "string" && name ? `a ${name}` : typeof value;
  } catch {
    return `an unreadable ${typeof value}`;
  }
}
