/**
 * NumPy `.npy` files: a strict reader and a writer for little-endian f32 (`<f4`) and f16 (`<f2`)
 * arrays in C order, any rank, format versions 1.0, 2.0 and 3.0. The reader also takes f64
 * (`<f8`) and bf16, converting them (src/_convert.ts): NumPy has no bf16 type, and
 * `np.save` of an `ml_dtypes.bfloat16` array writes the descr `'<V2'` (a 2-byte void: NumPy's
 * type codes are not extensible; see jax-ml/ml_dtypes issue 41), while the usual workaround
 * writes `str(dtype)`, `'bfloat16'`. Both are read as bf16; so is `'|V2'`. A 2-byte void could in
 * principle be something else: ml_dtypes has no other 2-byte type, and PyTorch and JAX dumps
 * hold bf16 there.
 *
 * Hand-written rather than taken from npm: the format is one magic string, a length and a
 * Python-literal dict, and the npm readers (`npyjs`, `numpy-parser`) rewrite that dict into JSON
 * with regular expressions, accept what NumPy would reject and do not check the data length.
 *
 * @module
 */
import { describeValue } from "./errors.ts";
import { bytesOf, checkTensor, elementCount, invalid, type Tensor } from "./_tensor.ts";
import { convertData, defaultTarget, type FileDType, fileItemSize } from "./_convert.ts";
import type { DType } from "./types.ts";
import { checkKeys } from "./validate.ts";

export type { Tensor } from "./_tensor.ts";

/** Options of {@linkcode parseNpy}. */
export interface ParseNpyOptions {
  /** Names the file in error messages (the error's `field`); default `"npy"`. */
  name?: string;
  /**
   * The dtype of the returned tensor. Default: the file's own for f32 and f16, f32 for bf16
   * (exact) and f64 (rounded to nearest even). `"f16"` rounds f32, bf16 and f64 to nearest even;
   * a finite value beyond f16's range (65,504) is an `INVALID_INPUT` error, not an infinity.
   */
  dtype?: DType;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
/**
 * Longest header accepted. NumPy refuses headers over 10,000 bytes unless told otherwise; a
 * 64-dimension shape of 16-digit sizes still fits in about 1,200 bytes.
 */
const MAX_HEADER = 10_000;
const DESCR: Readonly<Record<string, FileDType>> = {
  "<f4": "f32",
  "<f2": "f16",
  "<f8": "f64",
  "<V2": "bf16",
  "|V2": "bf16",
  "bfloat16": "bf16",
};

type PyValue = string | number | boolean | number[];

/** A strict reader of the one Python literal a `.npy` header holds. */
class HeaderParser {
  pos = 0;
  constructor(readonly text: string, readonly field: string) {}

  fail(what: string): never {
    const near = JSON.stringify(this.text.slice(this.pos, this.pos + 16));
    invalid(this.field, `malformed header: ${what} at offset ${this.pos} (near ${near})`);
  }

  space(): void {
    while (this.pos < this.text.length && " \t\r\n".includes(this.text[this.pos])) this.pos++;
  }

  eat(ch: string): boolean {
    this.space();
    if (this.text[this.pos] === ch) {
      this.pos++;
      return true;
    }
    return false;
  }

  expect(ch: string): void {
    if (!this.eat(ch)) this.fail(`expected '${ch}'`);
  }

  string(): string {
    this.space();
    const quote = this.text[this.pos];
    if (quote !== "'" && quote !== '"') this.fail("expected a quoted string");
    const end = this.text.indexOf(quote, this.pos + 1);
    if (end < 0) this.fail("unterminated string");
    const s = this.text.slice(this.pos + 1, end);
    if (s.includes("\\") || s.includes("\n")) this.fail("escape or newline in a string");
    this.pos = end + 1;
    return s;
  }

  int(): number {
    this.space();
    const m = /^(0|[1-9][0-9]{0,15})(?![0-9A-Za-z_.])/.exec(
      this.text.slice(this.pos, this.pos + 18),
    );
    if (!m) this.fail("expected a non-negative integer");
    this.pos += m[0].length;
    const n = Number(m[0]);
    if (!Number.isSafeInteger(n)) this.fail("integer too large");
    return n;
  }

  value(): PyValue {
    this.space();
    const c = this.text[this.pos];
    if (c === "'" || c === '"') return this.string();
    if (c === "(") return this.tuple();
    for (const [word, v] of [["True", true], ["False", false]] as const) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return v;
      }
    }
    return this.int();
  }

  /** `()`, `(n,)`, `(n, m)`, `(n, m,)`; `(n)` is an int in Python, not a tuple. */
  tuple(): number[] {
    this.expect("(");
    const items: number[] = [];
    if (this.eat(")")) return items;
    for (;;) {
      items.push(this.int());
      if (items.length > 64) this.fail("more than 64 dimensions");
      if (this.eat(")")) {
        if (items.length === 1) this.fail("a one-element tuple needs a trailing comma");
        return items;
      }
      this.expect(",");
      if (this.eat(")")) return items;
    }
  }

  dict(): Map<string, PyValue> {
    const out = new Map<string, PyValue>();
    this.expect("{");
    if (this.eat("}")) return out;
    for (;;) {
      const key = this.string();
      this.expect(":");
      if (out.has(key)) this.fail(`duplicate key '${key}'`);
      out.set(key, this.value());
      if (this.eat("}")) break;
      this.expect(",");
      if (this.eat("}")) break;
    }
    this.space();
    if (this.pos !== this.text.length) this.fail("unexpected text after the dict");
    return out;
  }
}

/**
 * Reads a `.npy` file holding a little-endian f32, f16, bf16 or f64 array in C order, as an f32
 * or f16 tensor (`options.dtype`).
 *
 * Every problem (bad magic, unknown version, header longer than the file, malformed or
 * non-ASCII header, unsupported dtype, Fortran order, truncated or trailing data) throws a
 * `DraftAttentionError` with code `"INVALID_INPUT"` whose `field` is `options.name`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpy, parseNpy } from "./npy.ts";
 * const bytes = encodeNpy({ dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * const t = parseNpy(bytes, { name: "x.npy" });
 * assert.ok(t.shape.join() === "2,2" && t.data[3] === 4);
 * ```
 */
export function parseNpy(bytes: Uint8Array, options: ParseNpyOptions = {}): Tensor {
  checkKeys("parseNpy", options);
  return parse(bytes, options, false) as Tensor;
}

/**
 * The length of the whole `.npy` file that `head` starts, read from its header alone (`head`
 * must hold the header: 10 or 12 bytes, then the header length they give, at most 10,000):
 * lets a reader of a pipe or a device stop after the data instead of reading to an end that
 * may never come. Errors as {@linkcode parseNpy}'s.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpy, npyFileBytes } from "./npy.ts";
 * const bytes = encodeNpy({ dtype: "f16", shape: [3], data: new Float16Array([1, 2, 3]) });
 * assert.ok(npyFileBytes(bytes.subarray(0, 128)) === bytes.length);
 * ```
 */
export function npyFileBytes(head: Uint8Array, options: ParseNpyOptions = {}): number {
  checkKeys("parseNpy", options);
  return parse(head, options, true) as number;
}

/** parseNpy, or with `headerOnly` the file's length from its header. */
function parse(bytes: Uint8Array, options: ParseNpyOptions, headerOnly: boolean): Tensor | number {
  const field = options.name ?? "npy";
  if (options.dtype !== undefined && options.dtype !== "f32" && options.dtype !== "f16") {
    invalid("dtype", `must be "f32" or "f16", got ${describeValue(options.dtype)}`);
  }
  if (!(bytes instanceof Uint8Array)) {
    invalid(field, `must be a Uint8Array, got ${describeValue(bytes)}`);
  }
  if (bytes.length < 10) invalid(field, `truncated: ${bytes.length} bytes, a .npy file has >= 10`);
  if (MAGIC.some((b, i) => bytes[i] !== b)) invalid(field, `not a .npy file (no \\x93NUMPY magic)`);
  const major = bytes[6], minor = bytes[7];
  if (major < 1 || major > 3 || minor !== 0) {
    invalid(field, `unsupported .npy format version ${major}.${minor} (1.0, 2.0 and 3.0 are read)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let start: number, headerLen: number;
  if (major === 1) {
    start = 10;
    headerLen = view.getUint16(8, true);
  } else {
    if (bytes.length < 12) invalid(field, `truncated: ${bytes.length} bytes, header length cut`);
    start = 12;
    headerLen = view.getUint32(8, true);
  }
  if (headerLen > MAX_HEADER) {
    invalid(field, `header length ${headerLen} exceeds the limit of ${MAX_HEADER} bytes`);
  }
  if (start + headerLen > bytes.length) {
    invalid(
      field,
      `truncated: the header needs ${start + headerLen} bytes, the file has ${bytes.length}`,
    );
  }
  const raw = bytes.subarray(start, start + headerLen);
  let text: string;
  if (major === 3) {
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    } catch {
      invalid(field, "header is not valid UTF-8");
    }
  } else {
    const bad = raw.findIndex((b) => b >= 0x80);
    if (bad >= 0) {
      invalid(
        field,
        `header is not ASCII (byte 0x${raw[bad].toString(16)} at offset ${start + bad})`,
      );
    }
    text = String.fromCharCode(...raw);
  }
  const header = new HeaderParser(text, field).dict();
  const keys = [...header.keys()].sort().join(", ");
  if (keys !== "descr, fortran_order, shape") {
    invalid(field, `header keys must be descr, fortran_order, shape; got ${keys || "none"}`);
  }
  const descr = header.get("descr");
  // Own keys only: "toString" must not find Object.prototype.toString.
  const stored = typeof descr === "string" && Object.hasOwn(DESCR, descr)
    ? DESCR[descr]
    : undefined;
  if (stored === undefined) {
    const shown = typeof descr === "string" ? `'${descr}'` : describeValue(descr);
    invalid(
      field,
      `dtype ${shown} is not supported; use '<f4' (f32), '<f2' (f16), '<f8' (f64) or bf16 ` +
        `('<V2' from ml_dtypes, or 'bfloat16')`,
    );
  }
  const shape = header.get("shape");
  if (!Array.isArray(shape)) invalid(field, `shape must be a tuple, got ${describeValue(shape)}`);
  const fortran = header.get("fortran_order");
  if (typeof fortran !== "boolean") {
    invalid(field, `fortran_order must be True or False, got ${describeValue(fortran)}`);
  }
  // Fortran and C order coincide when at most one dimension exceeds 1.
  if (fortran && shape.filter((d) => d > 1).length > 1) {
    invalid(
      field,
      "Fortran-order arrays are not supported; save with C order (np.ascontiguousarray)",
    );
  }
  const n = elementCount(field, shape, "f32");
  const need = n * fileItemSize(stored);
  if (!Number.isSafeInteger(need)) invalid(field, `shape (${shape.join(", ")}) is too large`);
  if (headerOnly) return start + headerLen + need;
  const have = bytes.length - start - headerLen;
  if (have !== need) {
    invalid(
      field,
      `${have < need ? "truncated data" : "trailing bytes after the data"}: shape (${
        shape.join(", ")
      }) of ${descr} needs ${need} bytes, the file holds ${have}`,
    );
  }
  const dtype = options.dtype ?? defaultTarget(stored);
  const begin = start + headerLen;
  const data = convertData({ bytes, begin, end: bytes.length, from: stored, to: dtype, field });
  return { dtype, shape, data };
}

/**
 * Writes a tensor as a version 1.0 `.npy` file, the header padded with spaces so that the data
 * starts at a multiple of 64 bytes, as NumPy does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpy } from "./npy.ts";
 * const bytes = encodeNpy({ dtype: "f16", shape: [3], data: new Float16Array([1, 2, 3]) });
 * assert.equal(bytes.length, 128 + 6);
 * ```
 */
export function encodeNpy(tensor: Tensor): Uint8Array<ArrayBuffer> {
  checkTensor("tensor", tensor);
  return withHeader(tensor.dtype === "f16" ? "<f2" : "<f4", tensor.shape, bytesOf(tensor.data));
}

/**
 * Writes a uint8 array (`|u1`, e.g. a block mask of `op.lastMask()`) as a version 1.0 `.npy`
 * file.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpyU8 } from "./npy.ts";
 * const bytes = encodeNpyU8({ shape: [1, 1, 2, 2], data: new Uint8Array([1, 0, 0, 1]) });
 * assert.ok(bytes.length === 128 + 4);
 * ```
 */
export function encodeNpyU8(array: { shape: number[]; data: Uint8Array }): Uint8Array<ArrayBuffer> {
  const { shape, data } = array;
  const n = elementCount("shape", shape, "f32");
  if (!(data instanceof Uint8Array) || data.length !== n) {
    invalid("data", `must be a Uint8Array of ${n} elements, got ${describeValue(data)}`);
  }
  return withHeader("|u1", shape, data);
}

/** A version 1.0 file of `descr` and `shape` around `body`, the data 64-byte aligned. */
function withHeader(descr: string, shape: number[], body: Uint8Array): Uint8Array<ArrayBuffer> {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  // At most 64 dimensions keep the dict far below version 1.0's 65,535-byte header limit.
  const total = Math.ceil((10 + dict.length + 1) / 64) * 64;
  const out = new Uint8Array(total + body.length);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, total - 10, true);
  const padded = dict.padEnd(total - 11, " ") + "\n";
  for (let i = 0; i < padded.length; i++) out[10 + i] = padded.charCodeAt(i);
  out.set(body, total);
  return out;
}
