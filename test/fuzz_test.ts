/**
 * Header fuzzing of the `.npy` and `.safetensors` readers: 100,000 mutated files in all (a fixed
 * seed, so a failure reproduces), mutations confined to the header (magic, version, length
 * field, dict/JSON text) so that each parse is cheap. Every file must either parse into
 * well-formed tensors (dtype f32/f16, shape of safe integers, data of the right class and
 * length, metadata of strings) or be rejected with a `DraftAttentionError` of code
 * `INVALID_INPUT`: no other exception, no hang, no crash.
 *
 * Besides bit flips, byte edits, insertions, deletions and duplications, tokens of the header
 * are swapped for a dictionary of hostile values (huge and fractional numbers, NaN, names of
 * `Object.prototype` members such as `toString`, dtypes of other widths) and the length field is
 * re-fitted to the mutated header half of the time, so mutations reach the deep checks instead
 * of stopping at "truncated".
 */
import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { encodeNpy, parseNpy } from "../src/npy.ts";
import { encodeSafetensors, parseSafetensors } from "../src/safetensors.ts";
import type { Tensor } from "../src/_tensor.ts";
import { Rng } from "./reference.ts";

/** Mutated files per format (100,000 in all). */
const ROUNDS = 50_000;

const ascii = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);

/** Values a token of the header may be replaced with. */
const NUMBERS = [
  "0",
  "-1",
  "1",
  "-0",
  "1.5",
  "1e3",
  "1e309",
  "NaN",
  "Infinity",
  "0x10",
  "4294967296",
  "9007199254740993",
  "99999999999999999999",
  "2147483648",
  "",
];
const WORDS = [
  "toString",
  "__proto__",
  "constructor",
  "valueOf",
  "hasOwnProperty",
  "<f4",
  "<f2",
  ">f4",
  "|u1",
  "<f8",
  "F32",
  "F16",
  "BF16",
  "F64",
  "I32",
  "descr",
  "shape",
  "fortran_order",
  "data_offsets",
  "dtype",
  "__metadata__",
  "True",
  "False",
  "None",
  "null",
  "true",
];
const BYTES = ascii(`"'(),:{}[]-.e9 \\\n\t\x00\x7f`);

/** One header of a seed file: where it ends, and how to write a new length into it. */
interface Format {
  name: string;
  /** Bytes [0, end) are the header (prefix, length field and text). */
  headerEnd(b: Uint8Array): number;
  /** Offset of the header text (after magic, version and length). */
  textStart(b: Uint8Array): number;
  /** Writes `len` as the header length, if the prefix still has room for it. */
  setLength(b: Uint8Array, len: number): void;
  parse(b: Uint8Array): Tensor[];
  /** Metadata of a successful parse, checked to be strings. */
  metadata?(b: Uint8Array): Record<string, unknown>;
}

const NPY: Format = {
  name: "npy",
  headerEnd: (b) => {
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return b[6] === 1 ? 10 + v.getUint16(8, true) : 12 + v.getUint32(8, true);
  },
  textStart: (b) => (b[6] === 1 ? 10 : 12),
  setLength: (b, len) => {
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (b[6] === 1 && b.length >= 10) v.setUint16(8, Math.min(len, 0xffff), true);
    else if (b.length >= 12) v.setUint32(8, len, true);
  },
  parse: (b) => [parseNpy(b, { name: "fuzz.npy" })],
};

const SAFETENSORS: Format = {
  name: "safetensors",
  headerEnd: (b) => 8 + new DataView(b.buffer, b.byteOffset).getUint32(0, true),
  textStart: () => 8,
  setLength: (b, len) => {
    if (b.length >= 8) new DataView(b.buffer, b.byteOffset).setUint32(0, len, true);
  },
  parse: (b) => Object.values(parseSafetensors(b, { name: "fuzz.safetensors" }).tensors),
  metadata: (b) => parseSafetensors(b).metadata,
};

/** A .npy file of the given version, header text (padded with spaces and \n) and data. */
function npyFile(major: number, header: string, data: Uint8Array): Uint8Array {
  const pre = major === 1 ? 10 : 12;
  const padded = header.padEnd(Math.ceil((pre + header.length + 1) / 64) * 64 - pre - 1) + "\n";
  const text = new TextEncoder().encode(padded);
  const out = new Uint8Array(pre + text.length + data.length);
  out.set(ascii("\x93NUMPY"));
  out[6] = major;
  const v = new DataView(out.buffer);
  if (major === 1) v.setUint16(8, text.length, true);
  else v.setUint32(8, text.length, true);
  out.set(text, pre);
  out.set(data, pre + text.length);
  return out;
}

function npySeeds(): Uint8Array[] {
  const f32 = (n: number) => new Uint8Array(Float32Array.from({ length: n }, (_, i) => i).buffer);
  return [
    encodeNpy({ dtype: "f32", shape: [2, 3], data: new Float32Array(6).fill(0.5) }),
    encodeNpy({ dtype: "f16", shape: [1, 2, 1, 2], data: new Float16Array([1, 2, 3, 4]) }),
    encodeNpy({ dtype: "f32", shape: [], data: new Float32Array([7]) }),
    encodeNpy({ dtype: "f32", shape: [0, 4], data: new Float32Array(0) }),
    npyFile(2, `{"shape":(3,),"fortran_order":False,"descr":"<f4"}`, f32(3)),
    npyFile(3, `{'descr': '<f4', 'fortran_order': True, 'shape': (1, 4), }`, f32(4)),
  ];
}

function safetensorsSeeds(): Uint8Array[] {
  const t = (dtype: "f32" | "f16", shape: number[]): Tensor => {
    const n = shape.reduce((a, d) => a * d, 1);
    return { dtype, shape, data: dtype === "f16" ? new Float16Array(n) : new Float32Array(n) };
  };
  return [
    encodeSafetensors({
      tensors: { q: t("f32", [1, 2, 1, 4]), k: t("f16", [2, 2]), v: t("f32", [1]) },
      metadata: { frames: "1", pool: "8x16", mode: "draft" },
    }),
    encodeSafetensors({ tensors: { x: t("f16", [3]), empty: t("f32", [0, 5]) } }),
    encodeSafetensors({ tensors: { s: t("f32", []) }, metadata: {} }),
  ];
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Replaces the token (string literal, number or word) around `at` by `word`. */
function replaceToken(h: Uint8Array, at: number, word: string, quote: boolean): Uint8Array {
  const isTok = (c: number) =>
    (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) ||
    c === 95 || c === 60 || c === 62 || c === 124 || c === 46 || c === 45 || c === 43;
  let s = at, e = at;
  while (s > 0 && isTok(h[s - 1])) s--;
  while (e < h.length && isTok(h[e])) e++;
  const q = h[s - 1] === 0x27 || h[s - 1] === 0x22 ? "" : quote ? '"' : "";
  return concat(h.subarray(0, s), ascii(q + word + q), h.subarray(e));
}

/** A mutant of `src`: its header mutated 1 to 4 times, the data left as it was. */
function mutate(src: Uint8Array, f: Format, rng: Rng): Uint8Array {
  const end = Math.min(f.headerEnd(src), src.length);
  let h: Uint8Array = src.slice(0, end);
  const data = src.subarray(end);
  const start = f.textStart(src);
  const textAt = () => start + Math.floor(rng.next() * Math.max(1, h.length - start));
  const anyAt = () => Math.floor(rng.next() * h.length);
  const ops = 1 + Math.floor(rng.next() * 4);
  for (let o = 0; o < ops && h.length > 0; o++) {
    const r = rng.next();
    if (r < 0.15) {
      const at = anyAt();
      h[at] ^= 1 << Math.floor(rng.next() * 8);
    } else if (r < 0.3) {
      h[textAt() % h.length] = BYTES[Math.floor(rng.next() * BYTES.length)];
    } else if (r < 0.4) {
      h[anyAt()] = Math.floor(rng.next() * 256);
    } else if (r < 0.5) {
      const at = textAt(), n = 1 + Math.floor(rng.next() * 8);
      h = concat(h.subarray(0, at), h.subarray(at + n));
    } else if (r < 0.58) {
      const at = textAt(), n = 1 + Math.floor(rng.next() * 16);
      h = concat(h.subarray(0, at + n), h.subarray(at, at + n), h.subarray(at + n));
    } else if (r < 0.75) {
      const list = rng.next() < 0.5 ? NUMBERS : WORDS;
      const word = list[Math.floor(rng.next() * list.length)];
      h = replaceToken(h, textAt() % Math.max(1, h.length), word, list === WORDS);
    } else if (r < 0.85) {
      // Nesting: a run of brackets (deep JSON / tuple recursion).
      const open = ["[", "(", "{"][Math.floor(rng.next() * 3)];
      const n = 1 + Math.floor(rng.next() * 2000);
      const at = textAt();
      h = concat(h.subarray(0, at), ascii(open.repeat(n)), h.subarray(at));
    } else if (r < 0.92) {
      f.setLength(h, Math.floor(rng.next() * 2 ** 32));
    } else {
      const at = textAt();
      const junk = Uint8Array.from(
        { length: 1 + Math.floor(rng.next() * 6) },
        () => Math.floor(rng.next() * 256),
      );
      h = concat(h.subarray(0, at), junk, h.subarray(at));
    }
  }
  // Half of the mutants get a length field that fits the mutated header.
  if (rng.next() < 0.5 && h.length >= start) f.setLength(h, h.length - start);
  return concat(h, data);
}

function hex(b: Uint8Array): string {
  return Array.from(b.subarray(0, 256), (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Checks a parsed tensor is well formed. */
function checkTensor(t: Tensor, where: string): void {
  assert.ok(t.dtype === "f32" || t.dtype === "f16", `${where}: dtype ${String(t.dtype)}`);
  assert.ok(Array.isArray(t.shape), `${where}: shape is not an array`);
  let n = 1;
  for (const d of t.shape) {
    assert.ok(Number.isSafeInteger(d) && d >= 0, `${where}: dimension ${d}`);
    n *= d;
  }
  const cls = t.dtype === "f16" ? Float16Array : Float32Array;
  assert.ok(t.data instanceof cls, `${where}: data is not a ${cls.name}`);
  assert.equal(t.data.length, n, `${where}: data holds ${t.data.length} values, shape ${n}`);
}

function fuzz(f: Format, seeds: Uint8Array[], seed: number) {
  const rng = new Rng(seed);
  let ok = 0, rejected = 0;
  const messages = new Set<string>();
  for (let i = 0; i < ROUNDS; i++) {
    const bytes = mutate(seeds[i % seeds.length], f, rng);
    const where = `${f.name} round ${i} (seed ${seed}, bytes ${hex(bytes)})`;
    let tensors: Tensor[];
    try {
      tensors = f.parse(bytes);
    } catch (e) {
      if (!(e instanceof DraftAttentionError) || e.code !== "INVALID_INPUT") {
        throw new Error(`${where}: untyped failure ${e}`, { cause: e });
      }
      assert.equal(typeof e.field, "string");
      messages.add(e.message.replace(/\d+/g, "#").slice(0, 60));
      rejected++;
      continue;
    }
    for (const t of tensors) checkTensor(t, where);
    if (f.metadata) {
      for (const [key, value] of Object.entries(f.metadata(bytes))) {
        assert.equal(typeof value, "string", `${where}: metadata ${key}`);
      }
    }
    ok++;
  }
  return { ok, rejected, distinctMessages: messages.size };
}

Deno.test(`fuzz: ${ROUNDS} mutated .npy headers parse or give INVALID_INPUT`, () => {
  const r = fuzz(NPY, npySeeds(), 0x6e7079);
  assert.ok(r.rejected > ROUNDS / 2 && r.ok > 100, JSON.stringify(r));
  assert.ok(r.distinctMessages > 20, JSON.stringify(r));
});

Deno.test(`fuzz: ${ROUNDS} mutated .safetensors headers parse or give INVALID_INPUT`, () => {
  const r = fuzz(SAFETENSORS, safetensorsSeeds(), 0x5afe);
  assert.ok(r.rejected > ROUNDS / 2 && r.ok > 100, JSON.stringify(r));
  assert.ok(r.distinctMessages > 20, JSON.stringify(r));
});

Deno.test("fuzz: names of Object.prototype members are not dtypes", () => {
  for (const word of ["toString", "constructor", "__proto__", "valueOf"]) {
    const npy = npyFile(
      1,
      `{'descr': '${word}', 'fortran_order': False, 'shape': (2,), }`,
      new Uint8Array(8),
    );
    assert.throws(
      () => parseNpy(npy),
      (e: unknown) =>
        e instanceof DraftAttentionError && e.code === "INVALID_INPUT" && e.message.includes(word),
    );
    const json = new TextEncoder().encode(
      JSON.stringify({ x: { dtype: word, shape: [2], data_offsets: [0, 8] } }),
    );
    const st = concat(new Uint8Array(8), json, new Uint8Array(8));
    new DataView(st.buffer).setUint32(0, json.length, true);
    assert.throws(
      () => parseSafetensors(st),
      (e: unknown) =>
        e instanceof DraftAttentionError && e.code === "INVALID_INPUT" && e.message.includes(word),
    );
  }
});
