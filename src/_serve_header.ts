/**
 * A bounded pre-check of a request body's `.safetensors` header, run by the edge handler before
 * the library's reader (src/safetensors.ts) sees the bytes. The reader is written for trusted
 * files; a hostile body can make it slow or make it accept what it should not:
 *
 * - `JSON.parse` keeps the last of two equal keys, so `{"q": ..., "q": ...}` or two `mode`s in
 *   `__metadata__` would run on whichever came last. Here every repeated key is an error.
 * - A header of a million empty tensors (`{"a0":{},"a1":{},...}`) costs seconds of parsing and
 *   error building. Here the header is capped in bytes, the top level in entries and arrays in
 *   items, so the work is linear in a small header.
 * - Deeply nested values reach error formatting that recurses (`RangeError`, HTTP 500). Here
 *   nothing may nest deeper than a shape inside an entry inside the header.
 *
 * One pass over the header text, no recursion. The tensor names and shapes are then read off
 * the (now small, flat) JSON so that sizes are checked before any tensor data is copied.
 *
 * @module
 */
import { DraftAttentionError } from "./errors.ts";

/** Limits of {@linkcode checkHeader}. */
export interface HeaderLimits {
  /** Longest JSON header in bytes. */
  maxHeaderBytes: number;
  /** Largest element count of each tensor. */
  maxTensorElements: number;
}

/** Top-level entries: q, k, v, `__metadata__`, and room for a few stray ones to be named. */
const MAX_ENTRIES = 16;
/** Keys of one `__metadata__` map or tensor entry (13 request fields, `format`, slack). */
const MAX_KEYS = 64;
/** Items of one array (a shape has 4 dimensions here, `data_offsets` 2). */
const MAX_ITEMS = 8;
/** header object > entry > shape array. */
const MAX_DEPTH = 3;
/** Longest key or string value quoted back in a message. */
const ECHO = 64;

function invalid(field: string, detail: string): never {
  throw new DraftAttentionError("INVALID_INPUT", field, detail);
}

/** A string for a message: JSON-quoted and cut to {@linkcode ECHO} characters. */
export function echo(s: string): string {
  return s.length <= ECHO
    ? JSON.stringify(s)
    : `${JSON.stringify(s.slice(0, ECHO))}... (${s.length} characters)`;
}

/** A name for a field: cut to {@linkcode ECHO} characters. */
function cut(s: string): string {
  return s.length <= ECHO ? s : `${s.slice(0, ECHO)}...`;
}

interface Frame {
  object: boolean;
  /** Keys seen so far (objects). */
  keys: Set<string>;
  /** Items seen so far. */
  items: number;
  /** The next string is a key (objects). */
  wantKey: boolean;
  /** Where this value sits, for messages: `body`, `body:q`, `body:__metadata__`. */
  at: string;
  /** The last key read (objects): names the value that follows it. */
  last?: string;
}

/**
 * Checks the structure of a header's JSON text: depth, entry and item counts, and no repeated
 * key in any object. Throws `INVALID_INPUT` naming the place; leaves the rest (value types,
 * offsets) to the reader.
 */
export function checkHeaderText(text: string, field = "body"): void {
  const stack: Frame[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    const top = stack[stack.length - 1];
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x5c /* \ */) j += 2;
        else if (d === 0x22) break;
        else j++;
      }
      if (j >= n) invalid(field, "header is not valid JSON: a string is not closed");
      if (top?.object && top.wantKey) {
        let key: string;
        try {
          key = JSON.parse(text.slice(i, j + 1)); // escapes decoded: "\u0071" is "q"
        } catch {
          invalid(field, "header is not valid JSON: a bad escape in a key");
        }
        if (top.keys.has(key)) {
          invalid(
            top.at,
            stack.length === 1
              ? `tensor ${echo(key)} appears twice in the header`
              : `key ${echo(key)} appears twice`,
          );
        }
        top.keys.add(key);
        const max = stack.length === 1 ? MAX_ENTRIES : MAX_KEYS;
        if (top.keys.size > max) {
          invalid(top.at, `more than ${max} ${stack.length === 1 ? "header entries" : "keys"}`);
        }
        top.wantKey = false;
        top.last = key;
      }
      i = j + 1;
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= MAX_DEPTH) {
        invalid(top?.at ?? field, `header nests deeper than ${MAX_DEPTH} levels`);
      }
      const at = stack.length === 0
        ? field
        : stack.length === 1
        ? `${field}:${cut(top.last ?? "")}`
        : top.at;
      stack.push({ object: c === 0x7b, keys: new Set(), items: 0, wantKey: c === 0x7b, at });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      if (stack.length === 0) {
        if (text.slice(i + 1).trim() !== "") {
          invalid(field, "header is not valid JSON: text after the object");
        }
        return;
      }
    } else if (c === 0x2c /* , */ && top) {
      if (top.object) top.wantKey = true;
      else if (++top.items >= MAX_ITEMS) {
        invalid(top.at, `an array in the header has more than ${MAX_ITEMS} items`);
      }
    }
    i++;
  }
  // Unbalanced or empty: the reader gives its own message.
}

/** What the header says about q, k, v. */
export interface HeaderSummary {
  /** Tensor names in header order. */
  names: string[];
}

/**
 * Reads and checks the header of a request body: length under the limit, structure (see
 * {@linkcode checkHeaderText}), exactly the tensors q, k, v, each with at most
 * `maxTensorElements` elements. Throws `INVALID_INPUT` or `TOO_LARGE` (field `q`/`k`/`v`).
 */
export function checkHeader(bytes: Uint8Array, limits: HeaderLimits, field = "body"): void {
  if (bytes.length < 8) return; // the reader reports the truncation
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = view.getUint32(0, true), hi = view.getUint32(4, true);
  const len = hi * 2 ** 32 + lo;
  if (len > limits.maxHeaderBytes) {
    invalid(
      field,
      `header length ${len} exceeds the limit of ${limits.maxHeaderBytes} bytes (maxHeaderBytes)`,
    );
  }
  if (8 + len > bytes.length) return; // truncated: the reader says so
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      bytes.subarray(8, 8 + len),
    );
  } catch {
    return; // the reader says so
  }
  checkHeaderText(text, field);
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch {
    return; // the reader says so
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) return;
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const sorted = [...names].sort();
  if (sorted.join() !== "k,q,v") {
    invalid(
      field,
      `must hold exactly the tensors q, k, v; got ${
        sorted.length ? sorted.slice(0, 8).map(cut).join(", ") : "none"
      }`,
    );
  }
  for (const name of ["q", "k", "v"]) {
    const shape = (header as Record<string, { shape?: unknown }>)[name]?.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      continue; // the reader names the problem
    }
    const count = shape.reduce((a: number, b: number) => a * b, 1);
    if (count > limits.maxTensorElements) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        name,
        `shape [${
          shape.join(", ")
        }] has ${count} elements; the limit is ${limits.maxTensorElements} (maxTensorElements)`,
      );
    }
  }
}
