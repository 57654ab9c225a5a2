import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { encodeNpy, parseNpy } from "../src/npy.ts";
import { encodeSafetensors, parseSafetensors } from "../src/safetensors.ts";
import type { Tensor } from "../src/_tensor.ts";

const b64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const ascii = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const utf8 = (s: string) => new TextEncoder().encode(s);
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const f32Bytes = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
const f16Bytes = (xs: number[]) => new Uint8Array(new Float16Array(xs).buffer);

/** Files written by NumPy 2.4 (`np.save`, `np.lib.format.write_array(version=...)`). */
const NUMPY = {
  // np.arange(6, dtype=float32).reshape(2, 3) * 0.5 - 1
  f4_v1:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAIC/AAAAvwAAAAAAAAA/AACAPwAAwD8=",
  // np.arange(6, dtype=float16).reshape(2, 1, 3) / 4
  f2_v1:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGYyJywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDEsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAA0ADgAOgA8AD0=",
  f4_v2:
    "k05VTVBZAgB0AAAAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMiwgMyksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAIC/AAAAvwAAAAAAAAA/AACAPwAAwD8=",
  f4_v3:
    "k05VTVBZAwB0AAAAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMiwgMyksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAIC/AAAAvwAAAAAAAAA/AACAPwAAwD8=",
  f4_scalar:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKCksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAOhA",
  f4_empty:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDAsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAo=",
  f8:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY4JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsKSwgfSAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAAAAAAAAAAAAAAAA",
  f4_fortran:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBUcnVlLCAnc2hhcGUnOiAoMiwgMyksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAIC/AAAAPwAAAL8AAIA/AAAAAAAAwD8=",
  f4_be:
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPmY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAq/gAAAvwAAAAAAAAA/AAAAP4AAAD/AAAA=",
};

const two16 = new Uint8Array(2);

/** A .npy file with the given version, header text (unpadded) and data bytes. */
function npy(major: number, header: string, data: Uint8Array): Uint8Array {
  const h = major === 3 ? utf8(header) : ascii(header);
  const len = new Uint8Array(major === 1 ? 2 : 4);
  if (major === 1) new DataView(len.buffer).setUint16(0, h.length, true);
  else new DataView(len.buffer).setUint32(0, h.length, true);
  return concat(ascii("\x93NUMPY"), new Uint8Array([major, 0]), len, h, data);
}

/** A .safetensors file with the given header text and data bytes. */
function st(header: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const h = utf8(header);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setUint32(0, h.length, true);
  return concat(len, h, data);
}

function rejects(fn: () => unknown, field: string, detail: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof DraftAttentionError, `not a DraftAttentionError: ${e}`);
    assert.equal(e.code, "INVALID_INPUT");
    assert.equal(e.field, field);
    assert.match(e.message, detail);
    return true;
  });
}

Deno.test("npy: reads NumPy's own files (v1, v2, v3, f4, f2, scalar, empty)", () => {
  const want = [-1, -0.5, 0, 0.5, 1, 1.5];
  for (const key of ["f4_v1", "f4_v2", "f4_v3"] as const) {
    const t = parseNpy(b64(NUMPY[key]), { name: key });
    assert.equal(t.dtype, "f32");
    assert.deepEqual(t.shape, [2, 3]);
    assert.ok(t.data instanceof Float32Array);
    assert.deepEqual([...t.data], want);
  }
  const h = parseNpy(b64(NUMPY.f2_v1));
  assert.equal(h.dtype, "f16");
  assert.deepEqual(h.shape, [2, 1, 3]);
  assert.ok(h.data instanceof Float16Array);
  assert.deepEqual([...h.data], [0, 0.25, 0.5, 0.75, 1, 1.25]);
  const s = parseNpy(b64(NUMPY.f4_scalar));
  assert.deepEqual(s.shape, []);
  assert.deepEqual([...s.data], [7.25]);
  const e = parseNpy(b64(NUMPY.f4_empty));
  assert.deepEqual(e.shape, [0, 3]);
  assert.equal(e.data.length, 0);
});

Deno.test("npy: NumPy files of other dtypes or orders are rejected by name", () => {
  rejects(
    () => parseNpy(npy(1, `{'descr': '<i2', 'fortran_order': False, 'shape': (1,)}`, two16)),
    "npy",
    /'<i2'.*not supported/,
  );
  rejects(() => parseNpy(b64(NUMPY.f4_be), { name: "b.npy" }), "b.npy", /'>f4'.*not supported/);
  rejects(() => parseNpy(b64(NUMPY.f4_fortran), { name: "c.npy" }), "c.npy", /Fortran/);
});

Deno.test("npy: hand-built headers: quoting, spacing, unaligned data, Fortran on a vector", () => {
  // Double quotes, no trailing comma, no padding: the data starts at an odd offset.
  const t = parseNpy(
    npy(1, `{"shape":(3,),"fortran_order":False,"descr":"<f4"}`, f32Bytes([1, 2, 3])),
  );
  assert.deepEqual([...t.data], [1, 2, 3]);
  // Fortran order is the same as C order when at most one dimension exceeds 1.
  const v = parseNpy(
    npy(
      2,
      `{'descr': '<f2', 'fortran_order': True, 'shape': (1, 4, 1), }\n`,
      f16Bytes([1, 2, 3, 4]),
    ),
  );
  assert.deepEqual(v.shape, [1, 4, 1]);
  // Rank 6.
  const r = parseNpy(
    npy(
      1,
      `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 1, 1, 1, 2)}`,
      f32Bytes([4, 3, 2, 1]),
    ),
  );
  assert.deepEqual([...r.data], [4, 3, 2, 1]);
});

Deno.test("npy: round trips f32 and f16 of every rank 0..5", () => {
  for (const dtype of ["f32", "f16"] as const) {
    for (let rank = 0; rank <= 5; rank++) {
      const shape = Array.from({ length: rank }, (_, i) => (i % 3) + 1);
      const n = shape.reduce((a, b) => a * b, 1);
      const values = Array.from({ length: n }, (_, i) => (i - 3) / 8);
      const data = dtype === "f16" ? new Float16Array(values) : new Float32Array(values);
      const bytes = encodeNpy({ dtype, shape, data });
      // NumPy aligns the data to 64 bytes.
      assert.equal((bytes.length - data.byteLength) % 64, 0);
      const back = parseNpy(bytes);
      assert.equal(back.dtype, dtype);
      assert.deepEqual(back.shape, shape);
      assert.deepEqual([...back.data], values);
    }
  }
});

Deno.test("npy: writes what NumPy writes, byte for byte", () => {
  const bytes = encodeNpy({
    dtype: "f32",
    shape: [2, 3],
    data: new Float32Array([-1, -0.5, 0, 0.5, 1, 1.5]),
  });
  assert.deepEqual(bytes, b64(NUMPY.f4_v1));
  const h = encodeNpy({
    dtype: "f16",
    shape: [2, 1, 3],
    data: new Float16Array([0, 0.25, 0.5, 0.75, 1, 1.25]),
  });
  assert.deepEqual(h, b64(NUMPY.f2_v1));
});

Deno.test("npy: malformed files are INVALID_INPUT naming the file and the problem", () => {
  const ok = `{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }`;
  const two = f32Bytes([1, 2]);
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /truncated: 0 bytes/],
    [ascii("\x93NUMPX\x01\x00\x00\x00"), /no \\x93NUMPY magic/],
    [npy(4, ok, two), /version 4\.0/],
    [ascii("\x93NUMPY\x02\x00\x10\x00\x00"), /truncated: 11 bytes, header length cut/],
    [concat(ascii("\x93NUMPY\x01\x00"), new Uint8Array([0x40, 0])), /header needs 74 bytes/],
    [concat(ascii("\x93NUMPY\x02\x00"), new Uint8Array([0, 0, 0, 0x80])), /exceeds the limit/],
    [npy(1, ok.replace("'<f4'", "'<f\xe9'"), two), /not ASCII \(byte 0xe9 at offset 23\)/],
    [
      concat(npy(3, ok, two).subarray(0, 12), new Uint8Array([0xff]), npy(3, ok, two).subarray(13)),
      /not valid UTF-8/,
    ],
    [
      npy(1, ok, two.subarray(0, 7)),
      /truncated data: shape \(2\) of <f4 needs 8 bytes, the file holds 7/,
    ],
    [npy(1, ok, concat(two, new Uint8Array(1))), /trailing bytes/],
    [npy(1, ok.replace("<f4", "<i4"), two), /'<i4' is not supported/],
    [npy(1, ok.replace("(2,)", "(2)"), two), /a one-element tuple needs a trailing comma/],
    [npy(1, ok.replace("(2,)", "2"), two), /shape must be a tuple, got 2/],
    [npy(1, ok.replace("(2,)", "(2, -1)"), two), /expected a non-negative integer/],
    [npy(1, ok.replace("(2,)", "(2L,)"), two), /expected a non-negative integer/],
    [npy(1, ok.replace("(2,)", "(02,)"), two), /expected a non-negative integer/],
    [npy(1, ok.replace("(2,)", "(99999999999999999999,)"), two), /expected a non-negative integer/],
    [npy(1, ok.replace("(2,)", "(4294967296, 4294967296)"), two), /too many elements/],
    [npy(1, ok.replace("(2,)", "[2]"), two), /expected a non-negative integer/],
    [npy(1, ok.replace("False", "0"), two), /fortran_order must be True or False/],
    [
      npy(1, ok.replace("'shape': (2,), ", ""), two),
      /header keys must be descr, fortran_order, shape/,
    ],
    [npy(1, ok.replace("}", "'x': 1}"), two), /header keys/],
    [npy(1, ok.replace("'descr'", "'shape'"), two), /duplicate key 'shape'/],
    [npy(1, ok + "x", two), /unexpected text after the dict/],
    [npy(1, ok.slice(0, 20), two), /unterminated string/],
    [npy(1, ok.replace("'<f4'", "'<f\\4'"), two), /escape/],
    [npy(1, "", two), /expected '\{'/],
    [
      npy(1, `{'descr': '<f4', 'fortran_order': False, 'shape': (${"1,".repeat(65)})}`, two),
      /64 dimensions/,
    ],
  ];
  for (const [bytes, detail] of cases) {
    rejects(() => parseNpy(bytes, { name: "q.npy" }), "q.npy", detail);
  }
  rejects(() => parseNpy("nope" as unknown as Uint8Array), "npy", /must be a Uint8Array/);
});

Deno.test("npy: the writer checks its input", () => {
  const bad: unknown[] = [
    null,
    { dtype: "f64", shape: [1], data: new Float32Array(1) },
    { dtype: "f32", shape: [2], data: new Float32Array(3) },
    { dtype: "f32", shape: [1], data: new Float16Array(1) },
    { dtype: "f32", shape: [1.5], data: new Float32Array(1) },
    { dtype: "f32", shape: "1", data: new Float32Array(1) },
  ];
  for (const t of bad) {
    assert.throws(
      () => encodeNpy(t as Tensor),
      (e) => e instanceof DraftAttentionError && e.code === "INVALID_INPUT",
    );
  }
});

Deno.test("safetensors: reads a hand-built file with F32, F16, metadata and a zero-size tensor", () => {
  const header = JSON.stringify({
    __metadata__: { frames: "2", layout: "BSHD" },
    a: { dtype: "F32", shape: [2, 1], data_offsets: [0, 8] },
    b: { dtype: "F16", shape: [3], data_offsets: [8, 14] },
    z: { dtype: "F32", shape: [0, 4], data_offsets: [14, 14] },
  }) + "   ";
  const file = parseSafetensors(st(header, concat(f32Bytes([1.5, -2]), f16Bytes([0.5, 1, 2]))));
  assert.deepEqual(file.metadata, { frames: "2", layout: "BSHD" });
  assert.deepEqual(Object.keys(file.tensors), ["a", "b", "z"]);
  assert.deepEqual(file.tensors.a.shape, [2, 1]);
  assert.ok(file.tensors.a.data instanceof Float32Array);
  assert.deepEqual([...file.tensors.a.data], [1.5, -2]);
  assert.ok(file.tensors.b.data instanceof Float16Array);
  assert.deepEqual([...file.tensors.b.data], [0.5, 1, 2]);
  assert.equal(file.tensors.z.data.length, 0);
  // Tensors may be stored out of name order; no metadata gives {}.
  const swapped = parseSafetensors(
    st(
      JSON.stringify({
        y: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
        x: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
      }),
      f32Bytes([1, 2]),
    ),
  );
  assert.deepEqual([...swapped.tensors.x.data], [1]);
  assert.deepEqual([...swapped.tensors.y.data], [2]);
  assert.deepEqual(swapped.metadata, {});
});

Deno.test("safetensors: round trip keeps order, dtypes, shapes, values and metadata", () => {
  const tensors: Record<string, Tensor> = {
    q: { dtype: "f16", shape: [1, 3, 1, 4], data: new Float16Array(12).map((_, i) => i / 4) },
    k: { dtype: "f32", shape: [5], data: new Float32Array([1, 2, 3, 4, 5]) },
    s: { dtype: "f32", shape: [], data: new Float32Array([9]) },
    ["__proto__"]: { dtype: "f32", shape: [1], data: new Float32Array([3]) },
  };
  const metadata = { model: "ltx-video", "ünï": "cødé ✓" };
  const bytes = encodeSafetensors({ tensors, metadata });
  const headerLen = new DataView(bytes.buffer).getUint32(0, true);
  assert.equal(headerLen % 8, 0);
  const back = parseSafetensors(bytes);
  assert.deepEqual(Object.keys(back.tensors), ["q", "k", "s", "__proto__"]);
  for (const name of Object.keys(tensors)) {
    assert.equal(back.tensors[name].dtype, tensors[name].dtype);
    assert.deepEqual(back.tensors[name].shape, tensors[name].shape);
    assert.deepEqual([...back.tensors[name].data], [...tensors[name].data]);
  }
  assert.deepEqual(back.metadata, metadata);
  assert.throws(
    () => encodeSafetensors({ tensors: { __metadata__: tensors.k } }),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_INPUT",
  );
  assert.throws(
    () => encodeSafetensors({ tensors: {}, metadata: { a: 1 as unknown as string } }),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_INPUT",
  );
});

Deno.test("safetensors: malformed files are INVALID_INPUT naming the file or tensor", () => {
  const entry = (o: Record<string, unknown>) =>
    JSON.stringify({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8], ...o } });
  const two = f32Bytes([1, 2]);
  const hugeLen = new Uint8Array(16);
  hugeLen[5] = 1; // 2^40
  const overLen = new Uint8Array(16);
  new DataView(overLen.buffer).setUint32(0, 1000, true);
  const cases: [Uint8Array, string, RegExp][] = [
    [new Uint8Array(5), "b", /truncated: 5 bytes/],
    [hugeLen, "b", /header length 1099511627776 exceeds the limit/],
    [overLen, "b", /truncated: header length 1000 runs past the end of the file \(16 bytes\)/],
    [
      concat(new Uint8Array([3, 0, 0, 0, 0, 0, 0, 0]), new Uint8Array([0x7b, 0xc3, 0x28])),
      "b",
      /not valid UTF-8/,
    ],
    [st(" {}"), "b", /must start with '\{'/],
    [st("{"), "b", /not valid JSON/],
    [st('{"x": 1,}'), "b", /not valid JSON/],
    [st("[]"), "b", /must start with|must be a JSON object/],
    [st('{"x": 1}'), "b:x", /header entry must be an object/],
    [st(entry({ dtype: "I32" }), two), "b:x", /"I32" is not supported; use F32, F16, BF16 or F64/],
    [st(entry({ dtype: "F128" }), two), "b:x", /"F128" is unknown/],
    [st(entry({ extra: 1 }), two), "b:x", /header entry keys must be data_offsets, dtype, shape/],
    [st(JSON.stringify({ x: { dtype: "F32", shape: [2] } }), two), "b:x", /header entry keys/],
    [st(entry({ shape: "2" }), two), "b:x", /shape must be an array/],
    [st(entry({ shape: [-2] }), two), "b:x", /integers >= 0/],
    [st(entry({ shape: [2 ** 40, 2 ** 40] }), two), "b:x", /too many elements/],
    [st(entry({ data_offsets: [8, 0] }), two), "b:x", /data_offsets must be/],
    [st(entry({ data_offsets: [0, 8.5] }), two), "b:x", /data_offsets must be/],
    [st(entry({ data_offsets: [0] }), two), "b:x", /data_offsets must be/],
    [
      st(entry({}), two.subarray(0, 6)),
      "b:x",
      /truncated: data_offsets end 8 is past the 6 data bytes/,
    ],
    [
      st(entry({ data_offsets: [0, 4] }), two),
      "b:x",
      /hold 4 bytes but shape \[2\] of F32 needs 8/,
    ],
    [st(entry({}), concat(two, new Uint8Array(4))), "b", /trailing bytes/],
    [
      st(
        JSON.stringify({
          x: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          y: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
        }),
        two,
      ),
      "b:y",
      /overlap/,
    ],
    [
      st(JSON.stringify({ x: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }), two),
      "b:x",
      /hole/,
    ],
    [st(JSON.stringify({ __metadata__: { a: 1 } })), "b:__metadata__.a", /must be a string/],
    [st(JSON.stringify({ __metadata__: ["a"] })), "b:__metadata__", /must be an object/],
  ];
  for (const [bytes, field, detail] of cases) {
    rejects(() => parseSafetensors(bytes, { name: "b" }), field, detail);
  }
  rejects(
    () => parseSafetensors(st(entry({}), two), { name: "b", maxHeaderBytes: 10 }),
    "b",
    /exceeds the limit of 10 bytes/,
  );
});

/** xorshift32: the fuzz is deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

const INTERESTING = [
  0x00,
  0x20,
  0x22,
  0x27,
  0x28,
  0x29,
  0x2c,
  0x30,
  0x39,
  0x3a,
  0x5b,
  0x5d,
  0x7b,
  0x7d,
  0x80,
  0xff,
];

function mutate(src: Uint8Array, headerEnd: number, rand: () => number): Uint8Array {
  let b = src.slice();
  const steps = 1 + Math.floor(rand() * 3);
  for (let s = 0; s < steps; s++) {
    const r = rand();
    // Mostly hit the header, where the parsing is.
    const at = Math.floor(rand() * (rand() < 0.85 ? Math.min(headerEnd, b.length) : b.length));
    if (r < 0.35) b[at] = INTERESTING[Math.floor(rand() * INTERESTING.length)];
    else if (r < 0.55) b[at] = Math.floor(rand() * 256);
    else if (r < 0.65) b = b.slice(0, Math.floor(rand() * b.length)); // truncate
    else if (r < 0.75) b = concat(b.subarray(0, at), b.subarray(at + 1)); // delete
    else if (r < 0.85) b = concat(b.subarray(0, at), b.subarray(at, at + 1), b.subarray(at)); // dup
    else {
      // Random length fields, small and huge (safetensors: bytes 0..7; npy: from byte 8).
      const v = rand() < 0.5 ? Math.floor(rand() * 300) : Math.floor(rand() * 2 ** 32);
      const pos = [0, 4, 8][Math.floor(rand() * 3)];
      if (pos + 4 <= b.length) new DataView(b.buffer).setUint32(pos, v, true);
    }
  }
  return b;
}

function fuzz(
  seeds: Uint8Array[],
  headerEnd: (b: Uint8Array) => number,
  parse: (b: Uint8Array) => Tensor[],
  rounds: number,
  seed: number,
): { ok: number; rejected: number } {
  const rand = rng(seed);
  let ok = 0, rejected = 0;
  for (let i = 0; i < rounds; i++) {
    const src = seeds[i % seeds.length];
    const bytes = mutate(src, headerEnd(src), rand);
    try {
      for (const t of parse(bytes)) {
        const n = t.shape.reduce((a, d) => a * d, 1);
        assert.equal(t.data.length, n, "a parsed tensor holds product(shape) values");
      }
      ok++;
    } catch (e) {
      if (!(e instanceof DraftAttentionError) || e.code !== "INVALID_INPUT") {
        throw new Error(`round ${i}: untyped failure ${e}`, { cause: e });
      }
      rejected++;
    }
  }
  return { ok, rejected };
}

Deno.test("npy: fuzz: 3000 mutated files give a tensor or INVALID_INPUT, nothing else", () => {
  const seeds = [
    b64(NUMPY.f4_v1),
    b64(NUMPY.f2_v1),
    b64(NUMPY.f4_v2),
    b64(NUMPY.f4_v3),
    b64(NUMPY.f4_scalar),
    npy(1, `{"shape":(3,),"fortran_order":False,"descr":"<f4"}`, f32Bytes([1, 2, 3])),
  ];
  const end = (b: Uint8Array) => b[6] === 1 ? 10 + (b[8] | (b[9] << 8)) : 12 + (b[8] | (b[9] << 8));
  const r = fuzz(seeds, end, (b) => [parseNpy(b)], 3000, 0x6e7079);
  assert.ok(r.rejected > 1000 && r.ok > 20, JSON.stringify(r));
});

Deno.test("safetensors: fuzz: 3000 mutated files give tensors or INVALID_INPUT, nothing else", () => {
  const seeds = [
    encodeSafetensors({
      tensors: {
        q: { dtype: "f32", shape: [1, 2, 1, 4], data: new Float32Array(8).fill(0.5) },
        k: { dtype: "f16", shape: [2, 2], data: new Float16Array([1, 2, 3, 4]) },
      },
      metadata: { frames: "1", pool: "8,16" },
    }),
    st(JSON.stringify({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }), f32Bytes([1, 2])),
  ];
  const end = (b: Uint8Array) => 8 + new DataView(b.buffer, b.byteOffset).getUint32(0, true);
  const r = fuzz(seeds, end, (b) => Object.values(parseSafetensors(b).tensors), 3000, 0x5afe);
  assert.ok(r.rejected > 1000 && r.ok > 20, JSON.stringify(r));
});

// ---------------------------------------------------------------------------------------------
// bf16 and f64 files: expected values worked out by hand from the bit patterns (not by the
// conversion under test), ties included.
// ---------------------------------------------------------------------------------------------

const u16Bytes = (xs: number[]) => new Uint8Array(new Uint16Array(xs).buffer);
const f64Bytes = (xs: number[]) => new Uint8Array(new Float64Array(xs).buffer);
const bitsOf16 = (
  t: Tensor,
) => [...new Uint16Array(t.data.buffer, t.data.byteOffset, t.data.length)];
const bitsOf32 = (
  t: Tensor,
) => [...new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length)];

/** bf16 bit patterns and the f32 bits (always exact: the pattern shifted left by 16). */
const BF16_TO_F32: [number, number][] = [
  [0x3f80, 0x3f800000], // 1
  [0xc049, 0xc0490000], // -3.140625
  [0x0001, 0x00010000], // the smallest bf16 subnormal, 2^-133
  [0x7f7f, 0x7f7f0000], // the largest bf16, 3.3895e38
  [0x8000, 0x80000000], // -0
  [0xff80, 0xff800000], // -infinity, kept (run() rejects it with its coordinates)
];

/** bf16 bit patterns and the f16 bits of the value rounded to nearest, ties to even. */
const BF16_TO_F16: [number, number][] = [
  [0x3f80, 0x3c00], // 1
  [0x4049, 0x4248], // 3.140625 = 2 * (1 + 584/1024): exact in f16
  [0x477f, 0x7bf8], // 65280 = 2^15 * (1 + 1016/1024): exact
  [0x33c0, 0x0002], // 1.5 * 2^-24: halfway between subnormals 1 and 2 -> 2 (even)
  [0x3420, 0x0002], // 2.5 * 2^-24: halfway between 2 and 3 -> 2 (even)
  [0x3460, 0x0004], // 3.5 * 2^-24: halfway between 3 and 4 -> 4 (even)
  [0x3300, 0x0000], // 0.5 * 2^-24: halfway between 0 and 1 -> 0 (even)
  [0x3340, 0x0001], // 0.75 * 2^-24: nearer 1
  [0xb340, 0x8001], // -0.75 * 2^-24
];

Deno.test("npy: bf16 files ('|V2' from np.save, '<V2' from ml_dtypes, 'bfloat16') read exactly", () => {
  // np.save(np.frombuffer(<u2 [0x3F80, 0xC049, 0x0001, 0xFF80]>, dtype='V2').reshape(2, 2)),
  // NumPy 2.4: the descr a 2-byte void gets.
  const fromNumpy = parseNpy(
    b64(
      "k05VTVBZAQB2AHsnZGVzY3InOiAnfFYyJywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDIpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAqAP0nAAQCA/w==",
    ),
  );
  assert.equal(fromNumpy.dtype, "f32");
  assert.deepEqual(fromNumpy.shape, [2, 2]);
  assert.deepEqual(bitsOf32(fromNumpy), [0x3f800000, 0xc0490000, 0x00010000, 0xff800000]);
  for (const descr of ["<V2", "bfloat16"]) {
    const file = npy(
      1,
      `{'descr': '${descr}', 'fortran_order': False, 'shape': (${BF16_TO_F32.length},), }`,
      u16Bytes(BF16_TO_F32.map(([b]) => b)),
    );
    const t = parseNpy(file);
    assert.equal(t.dtype, "f32");
    assert.deepEqual(bitsOf32(t), BF16_TO_F32.map(([, f]) => f));
    assert.equal(t.data[1], -3.140625);
  }
  const h = parseNpy(
    npy(
      1,
      `{'descr': '<V2', 'fortran_order': False, 'shape': (${BF16_TO_F16.length},), }`,
      u16Bytes(BF16_TO_F16.map(([b]) => b)),
    ),
    { dtype: "f16" },
  );
  assert.equal(h.dtype, "f16");
  assert.ok(h.data instanceof Float16Array);
  assert.deepEqual(bitsOf16(h), BF16_TO_F16.map(([, f]) => f));
});

Deno.test("npy and safetensors: bf16 and f64 beyond the target's range are errors, not infinity", () => {
  // bf16 0x4780 = 65536: past f16's 65504.
  rejects(
    () =>
      parseNpy(
        npy(
          1,
          `{'descr': '<V2', 'fortran_order': False, 'shape': (2,)}`,
          u16Bytes([0x3f80, 0x4780]),
        ),
        { name: "q.npy", dtype: "f16" },
      ),
    "q.npy",
    /value 65536 at index 1 overflows f16 \(largest finite 65504\); read the file as f32/,
  );
  // f64 65520 is halfway between 65504 and 65536 (= infinity in f16): ties to even -> infinity.
  rejects(
    () =>
      parseSafetensors(
        encodeF64({ x: [65519.99, 65520] }),
        { name: "d.safetensors", dtype: "f16" },
      ),
    "d.safetensors:x",
    /value 65520 at index 1 overflows f16/,
  );
  // f32's largest plus half an ulp: (2^25 - 1) * 2^103, ties to even -> infinity.
  rejects(
    () => parseSafetensors(encodeF64({ y: [1, (2 ** 25 - 1) * 2 ** 103] })),
    "safetensors:y",
    /overflows f32 \(largest finite 3.4028234663852886e\+38\)/,
  );
  // An infinity stored as such is kept (run() names its coordinates).
  const inf = parseSafetensors(encodeF64({ z: [-Infinity] }), { dtype: "f16" });
  assert.equal(inf.tensors.z.data[0], -Infinity);
  rejects(() => parseNpy(b64(NUMPY.f4_v1), { dtype: "bf16" as "f32" }), "dtype", /"f32" or "f16"/);
});

/** A safetensors file of F64 tensors, written by hand. */
function encodeF64(tensors: Record<string, number[]>): Uint8Array {
  const header: Record<string, unknown> = {};
  let at = 0;
  for (const [name, xs] of Object.entries(tensors)) {
    header[name] = { dtype: "F64", shape: [xs.length], data_offsets: [at, at + 8 * xs.length] };
    at += 8 * xs.length;
  }
  return st(JSON.stringify(header), concat(...Object.values(tensors).map(f64Bytes)));
}

Deno.test("npy and safetensors: f64 rounds to nearest even into f32 and f16", () => {
  const xs = [
    1 + 2 ** -24, // halfway between f32 1 and 1 + 2^-23 -> 1 (even)
    1 + 3 * 2 ** -24, // halfway between 1 + 2^-23 and 1 + 2^-22 -> 1 + 2^-22 (even)
    1 + 2 ** -24 + 2 ** -50, // just above halfway -> up
    0.1,
    -2.5,
  ];
  const want32 = [0x3f800000, 0x3f800002, 0x3f800001, 0x3dcccccd, 0xc0200000];
  const np = parseNpy(
    npy(1, `{'descr': '<f8', 'fortran_order': False, 'shape': (5,)}`, f64Bytes(xs)),
  );
  assert.equal(np.dtype, "f32");
  assert.deepEqual(bitsOf32(np), want32);
  assert.deepEqual([...parseNpy(b64(NUMPY.f8)).data], [0, 0]); // np.zeros(2) from NumPy
  const file = parseSafetensors(encodeF64({ a: xs }));
  assert.deepEqual(bitsOf32(file.tensors.a), want32);
  const ys = [
    1 + 2 ** -11, // halfway between f16 1 and 1 + 2^-10 -> 1
    1 + 3 * 2 ** -11, // -> 1 + 2^-9 (even)
    65504,
    65519.99, // below the halfway point to 65536 -> 65504
    -(2 ** -25), // halfway between -0 and the smallest subnormal -> -0
    0.1, // 0x2e66: 0.0999755859375
  ];
  const want16 = [0x3c00, 0x3c02, 0x7bff, 0x7bff, 0x8000, 0x2e66];
  const h = parseSafetensors(encodeF64({ b: ys }), { dtype: "f16" });
  assert.equal(h.tensors.b.dtype, "f16");
  assert.deepEqual(bitsOf16(h.tensors.b), want16);
});

Deno.test("safetensors: BF16 tensors (as torch and safetensors write them) read as f32 or f16", () => {
  const header = JSON.stringify({
    __metadata__: { format: "pt", frames: "1" },
    q: { dtype: "BF16", shape: [2, 3], data_offsets: [0, 12] },
    k: { dtype: "F32", shape: [1], data_offsets: [12, 16] },
  });
  const bytes = st(
    header,
    concat(u16Bytes(BF16_TO_F16.slice(0, 6).map(([b]) => b)), f32Bytes([1 + 2 ** -11])),
  );
  const a = parseSafetensors(bytes, { name: "dump" });
  assert.equal(a.tensors.q.dtype, "f32");
  assert.deepEqual(a.tensors.q.shape, [2, 3]);
  assert.deepEqual(
    bitsOf32(a.tensors.q),
    BF16_TO_F16.slice(0, 6).map(([b]) => (b << 16) >>> 0),
  );
  assert.equal(a.tensors.k.dtype, "f32");
  assert.equal(a.metadata.frames, "1");
  const b = parseSafetensors(bytes, { dtype: "f16" });
  assert.deepEqual(bitsOf16(b.tensors.q), BF16_TO_F16.slice(0, 6).map(([, f]) => f));
  // F32 1 + 2^-11 into f16: halfway -> 1.
  assert.deepEqual(bitsOf16(b.tensors.k), [0x3c00]);
  // The byte count is the BF16 one: 2 bytes per element.
  rejects(
    () =>
      parseSafetensors(
        st(
          JSON.stringify({ x: { dtype: "BF16", shape: [3], data_offsets: [0, 4] } }),
          new Uint8Array(4),
        ),
      ),
    "safetensors:x",
    /hold 4 bytes but shape \[3\] of BF16 needs 6/,
  );
});
