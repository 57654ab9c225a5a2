/**
 * `.safetensors` files: a strict reader and a writer for F32 and F16 tensors with a
 * `__metadata__` string map. The reader also takes BF16 (the dtype of nearly every real
 * checkpoint and activation dump) and F64, converted to f32 or f16 (src/_convert.ts).
 *
 * Layout: an unsigned 64-bit little-endian header length `N`, `N` bytes of UTF-8 JSON
 * (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, offsets
 * relative to the byte buffer after the header), then the byte buffer. Hand-written: npm has no
 * small standalone reader (the Hugging Face packages parse only headers of remote files).
 *
 * @module
 */
import { describeValue } from "./errors.ts";
import { bytesOf, checkTensor, elementCount, invalid, type Tensor } from "./_tensor.ts";
import { convertData, defaultTarget, type FileDType, fileItemSize } from "./_convert.ts";
import type { DType } from "./types.ts";

export type { Tensor } from "./_tensor.ts";

/** The contents of a `.safetensors` file. */
export interface SafetensorsFile {
  /** Tensors by name, in the file's header order. */
  tensors: Record<string, Tensor>;
  /** The `__metadata__` map (empty when absent). */
  metadata: Record<string, string>;
}

/** Options of {@linkcode parseSafetensors}. */
export interface ParseSafetensorsOptions {
  /** Names the file in error messages; tensor errors read `"<name>:<tensor>"`. Default `"safetensors"`. */
  name?: string;
  /** Longest JSON header accepted; default 100 MB, the reference implementation's limit. */
  maxHeaderBytes?: number;
  /**
   * The dtype of every returned tensor. Default: F32 and F16 as stored, BF16 (exactly) and F64
   * (rounded to nearest even) as f32. `"f16"` rounds F32, BF16 and F64 to nearest even; a
   * finite value beyond f16's range (65,504) is an `INVALID_INPUT` error, not an infinity.
   */
  dtype?: DType;
}

const DTYPES: Readonly<Record<string, FileDType>> = {
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
  F64: "f64",
};
/** Dtypes of the format that this reader does not convert. */
const OTHER_DTYPES = new Set([
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "I16",
  "U16",
  "I32",
  "U32",
  "I64",
  "U64",
]);
const ENTRY_KEYS = "data_offsets, dtype, shape";

/**
 * Reads a `.safetensors` file whose tensors are all F32, F16, BF16 or F64, as f32 or f16 tensors
 * (`options.dtype`).
 *
 * Rejected with a `DraftAttentionError` (code `"INVALID_INPUT"`): a header length past the end
 * of the file or over the limit, a header that is not UTF-8 or not a JSON object, unknown or
 * missing entry fields, unsupported dtypes, a byte range that does not match the shape, and
 * byte ranges that overlap, leave holes or do not end where the file ends.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeSafetensors, parseSafetensors } from "./safetensors.ts";
 * const bytes = encodeSafetensors({
 *   tensors: { x: { dtype: "f32", shape: [2], data: new Float32Array([1, 2]) } },
 *   metadata: { frames: "2" },
 * });
 * const file = parseSafetensors(bytes);
 * assert.ok(file.tensors.x.data[1] === 2 && file.metadata.frames === "2");
 * ```
 */
export function parseSafetensors(
  bytes: Uint8Array,
  options: ParseSafetensorsOptions = {},
): SafetensorsFile {
  const field = options.name ?? "safetensors";
  const maxHeader = options.maxHeaderBytes ?? 100_000_000;
  if (options.dtype !== undefined && options.dtype !== "f32" && options.dtype !== "f16") {
    invalid("dtype", `must be "f32" or "f16", got ${describeValue(options.dtype)}`);
  }
  if (!(bytes instanceof Uint8Array)) {
    invalid(field, `must be a Uint8Array, got ${describeValue(bytes)}`);
  }
  if (bytes.length < 8) {
    invalid(field, `truncated: ${bytes.length} bytes, a .safetensors file has >= 8`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = view.getUint32(0, true), hi = view.getUint32(4, true);
  const headerLen = hi * 2 ** 32 + lo;
  if (hi !== 0 || headerLen > maxHeader) {
    invalid(field, `header length ${headerLen} exceeds the limit of ${maxHeader} bytes`);
  }
  if (8 + headerLen > bytes.length) {
    invalid(
      field,
      `truncated: header length ${headerLen} runs past the end of the file (${bytes.length} bytes)`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      bytes.subarray(8, 8 + headerLen),
    );
  } catch {
    invalid(field, "header is not valid UTF-8");
  }
  if (!text.startsWith("{")) invalid(field, `header must start with '{'`);
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    invalid(field, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    invalid(field, "header must be a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  let metadata: Record<string, string> = {};
  const entries: {
    name: string;
    stored: FileDType;
    shape: number[];
    begin: number;
    end: number;
  }[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = readMetadata(field, raw);
      continue;
    }
    const at = `${field}:${name}`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      invalid(at, "header entry must be an object { dtype, shape, data_offsets }");
    }
    const entry = raw as Record<string, unknown>;
    const keys = Object.keys(entry).sort().join(", ");
    if (keys !== ENTRY_KEYS) invalid(at, `header entry keys must be ${ENTRY_KEYS}; got ${keys}`);
    // Own keys only: "constructor" must not find Object.prototype.constructor.
    const stored = typeof entry.dtype === "string" && Object.hasOwn(DTYPES, entry.dtype)
      ? DTYPES[entry.dtype]
      : undefined;
    if (stored === undefined) {
      const known = typeof entry.dtype === "string" && OTHER_DTYPES.has(entry.dtype);
      invalid(
        at,
        `dtype ${describeValue(entry.dtype)} is ${
          known ? "not supported" : "unknown"
        }; use F32, F16, BF16 or F64`,
      );
    }
    if (!Array.isArray(entry.shape)) {
      invalid(at, `shape must be an array, got ${describeValue(entry.shape)}`);
    }
    const n = elementCount(at, entry.shape, "f32");
    const need = n * fileItemSize(stored);
    if (!Number.isSafeInteger(need)) {
      invalid(at, `shape ${describeValue(entry.shape)} is too large`);
    }
    const offsets = entry.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((x) => Number.isSafeInteger(x) && x >= 0) || offsets[0] > offsets[1]
    ) {
      invalid(
        at,
        `data_offsets must be [begin, end] with 0 <= begin <= end, got ${describeValue(offsets)}`,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataLen) {
      invalid(at, `truncated: data_offsets end ${end} is past the ${dataLen} data bytes`);
    }
    if (end - begin !== need) {
      invalid(
        at,
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape ${
          describeValue(entry.shape)
        } of ${entry.dtype} needs ${need}`,
      );
    }
    entries.push({ name, stored, shape: entry.shape as number[], begin, end });
  }
  // The byte buffer must be covered exactly: no overlap (two tensors sharing bytes), no hole.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let next = 0;
  for (const e of sorted) {
    if (e.begin !== next) {
      invalid(
        `${field}:${e.name}`,
        `data_offsets [${e.begin}, ${e.end}] ${
          e.begin < next ? "overlap another tensor" : `leave a hole after byte ${next}`
        }`,
      );
    }
    next = e.end;
  }
  if (next !== dataLen) {
    invalid(field, `trailing bytes: the tensors end at data byte ${next}, the file at ${dataLen}`);
  }
  const tensors = Object.fromEntries(
    entries.map((e) => {
      const dtype = options.dtype ?? defaultTarget(e.stored);
      const data = convertData({
        bytes,
        begin: dataStart + e.begin,
        end: dataStart + e.end,
        from: e.stored,
        to: dtype,
        field: `${field}:${e.name}`,
      });
      return [e.name, { dtype, shape: e.shape, data }];
    }),
  );
  return { tensors, metadata };
}

function readMetadata(field: string, raw: unknown): Record<string, string> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    invalid(`${field}:__metadata__`, `must be an object of strings, got ${describeValue(raw)}`);
  }
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== "string") {
      invalid(`${field}:__metadata__.${key}`, `must be a string, got ${describeValue(value)}`);
    }
  }
  return Object.fromEntries(Object.entries(raw)) as Record<string, string>;
}

/**
 * Writes tensors (in the given order, packed back to back) and an optional metadata map as a
 * `.safetensors` file. The header is padded with spaces to a multiple of 8 bytes so the data
 * of every f32/f16 tensor is aligned for a zero-copy reader.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeSafetensors } from "./safetensors.ts";
 * const bytes = encodeSafetensors({
 *   tensors: { out: { dtype: "f16", shape: [1, 2], data: new Float16Array([0.5, 1]) } },
 * });
 * assert.equal(bytes.length % 2, 0);
 * ```
 */
export function encodeSafetensors(
  file: { tensors: Record<string, Tensor>; metadata?: Record<string, string> },
): Uint8Array<ArrayBuffer> {
  const header: Record<string, unknown> = {};
  if (file.metadata !== undefined) {
    readMetadata("metadata", file.metadata);
    header.__metadata__ = file.metadata;
  }
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, tensor] of Object.entries(file.tensors)) {
    if (name === "__metadata__" || name === "") {
      invalid(`tensors.${name}`, "is not a usable tensor name");
    }
    checkTensor(`tensors.${name}`, tensor);
    const body = bytesOf(tensor.data);
    Object.defineProperty(header, name, {
      value: {
        dtype: tensor.dtype === "f16" ? "F16" : "F32",
        shape: tensor.shape,
        data_offsets: [offset, offset + body.length],
      },
      enumerable: true,
    });
    parts.push(body);
    offset += body.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
