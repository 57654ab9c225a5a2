/**
 * The WGSL preprocessor (src/webgpu/specialize.ts) and the host mirrors of the kernels' WGSL:
 * - directives on small sources: includes, placeholders, nested `@if` / `@else`, `@unroll`, and
 *   every malformed input an error that names the problem (unknown const, unknown directive,
 *   unbalanced blocks);
 * - every variant of the flash table, under every device option, specialises to WGSL without a
 *   directive left, and every flag its kernel file tests is one the host sets;
 * - each kernel's `struct Params` has the fields, types and byte offsets of its host layout
 *   (the `*_PARAMS` tables that `packParams` writes), for every WGSL file with such a struct.
 *
 * No GPU needed: the WGSL is compared as text here; the GPU tests run it.
 */
import assert from "node:assert/strict";
import { WGSL } from "../src/generated/wgsl.ts";
import { type ParamLayout, paramsBytes } from "../src/webgpu/kernel.ts";
import {
  FLASH_PARAMS,
  flashSource,
  HIST_PARAMS,
  LISTS_PARAMS,
  MAP_PARAMS,
  PICK_PARAMS,
  POOL_PARAMS,
} from "../src/webgpu/kernels.ts";
import {
  ROW_PARAMS,
  SAMPLED_PARAMS,
  TOKENS_PARAMS,
  TOKENS_PICK_PARAMS,
} from "../src/webgpu/mask.ts";
import { specialize, specializeSource } from "../src/webgpu/specialize.ts";
import { FLASH_VARIANTS, flashConfig } from "../src/webgpu/variants.ts";

/** Non-empty lines of `code`, trimmed. */
const lines = (code: string) => code.split("\n").map((l) => l.trim()).filter((l) => l);

// ---------------------------------------------------------------------------------------------
// Directives
// ---------------------------------------------------------------------------------------------

Deno.test("specialize: placeholders take the host's values", () => {
  const source = "const A: u32 = 1u;\nconst B: u32 = 2u;\nfn f() {}";
  const code = specializeSource(source, { consts: { A: 7, B: 0 } });
  assert.deepEqual(lines(code), ["const A: u32 = 7u;", "const B: u32 = 0u;", "fn f() {}"]);
  // A const the source does not declare (a misspelt flag) is an error, not a silent default.
  assert.throws(
    () => specializeSource(source, { name: "k", consts: { C: 1 } }),
    /WGSL k has no placeholder const C/,
  );
  // Only whole `const NAME: u32 = <n>u;` lines are placeholders.
  assert.throws(
    () => specializeSource("let A: u32 = 1u;", { consts: { A: 1 } }),
    /no placeholder const A/,
  );
});

Deno.test("specialize: nested @if / @else keep the lines of the settings", () => {
  const source = [
    "const A: u32 = 0u;",
    "const B: u32 = 0u;",
    "// @if A",
    "a;",
    "  // @if B",
    "  ab;",
    "  // @else",
    "  a_not_b;",
    "  // @endif",
    "// @else",
    "not_a;",
    "  // @if B",
    "  not_a_b;",
    "  // @endif",
    "// @endif",
    "end;",
  ].join("\n");
  const run = (A: number, B: number) =>
    lines(specializeSource(source, { consts: { A, B } })).slice(2);
  assert.deepEqual(run(1, 1), ["a;", "ab;", "end;"]);
  assert.deepEqual(run(1, 0), ["a;", "a_not_b;", "end;"]);
  assert.deepEqual(run(0, 1), ["not_a;", "not_a_b;", "end;"]);
  assert.deepEqual(run(0, 0), ["not_a;", "end;"]);
  // Any non-zero value holds (flags are 0 or 1, sizes may be tested too).
  assert.deepEqual(run(5, 0), ["a;", "a_not_b;", "end;"]);
  // The source's own value where the host sets none.
  assert.deepEqual(lines(specializeSource(source)).slice(2), ["not_a;", "end;"]);
});

Deno.test("specialize: @if of an undefined flag and unbalanced blocks are errors", () => {
  const bad = (source: string, message: RegExp) =>
    assert.throws(() => specializeSource(source, { name: "k" }), message);
  bad("// @if NOPE\nx;\n// @endif", /WGSL k: @if NOPE is no u32 const/);
  // A flag must be a u32 const of the source (an override is decided after compilation).
  bad("override F: u32 = 1u;\n// @if F\nx;\n// @endif", /@if F is no u32 const/);
  bad("const F: u32 = 1u;\n// @if F\nx;", /@if without \/\/ @endif/);
  bad("const F: u32 = 1u;\nx;\n// @endif", /unmatched \/\/ @endif/);
  bad("const F: u32 = 1u;\n// @else\nx;", /stray \/\/ @else/);
  bad("const F: u32 = 1u;\n// @if F\n// @else\n// @else\n// @endif", /stray \/\/ @else/);
  // A directive outside the set (a typo, or one this preprocessor never had) is an error.
  bad("const F: u32 = 1u;\n// @if F\nx;\n// @elif F\n// @endif", /unknown directive \/\/ @elif/);
  bad("// @ifdef F", /unknown directive \/\/ @ifdef/);
  // Comments that mention a directive mid-line are text.
  assert.equal(specializeSource("// see `// @if X` below"), "// see `// @if X` below");
});

Deno.test("specialize: @include expands files, nested, and the storage type", () => {
  const files = {
    outer: "outer;\n// @include inner\n",
    inner: "inner;\n",
    storage_f32: "alias S = f32;\n",
    storage_f16: "alias S = u32;\n",
    loop: "// @include loop\n",
  };
  const source = "// @include storage\n  // @include outer\nmain;";
  assert.deepEqual(lines(specializeSource(source, { files })), [
    "alias S = f32;",
    "outer;",
    "inner;",
    "main;",
  ]);
  assert.equal(lines(specializeSource(source, { files, storage: "f16" }))[0], "alias S = u32;");
  assert.throws(
    () => specializeSource("// @include missing", { name: "k", files }),
    /WGSL k: no WGSL file missing to include/,
  );
  assert.throws(() => specializeSource("// @include loop", { files }), /nested too deep/);
  // Flags of an included file are resolved with the rest (the flash kernels' shared steps).
  const flagged = { step: "// @if F\nyes;\n// @else\nno;\n// @endif\n" };
  const main = "const F: u32 = 0u;\n// @include step";
  assert.deepEqual(lines(specializeSource(main, { files: flagged, consts: { F: 1 } })), [
    "const F: u32 = 1u;",
    "yes;",
  ]);
});

Deno.test("specialize: @unroll names one register per copy, nested, counts from consts", () => {
  const source = [
    "const N: u32 = 2u;",
    "// @unroll R N",
    "// @unroll C 2",
    "var o_R_C = f(R, C, x_R);",
    "// @end",
    "// @end",
  ].join("\n");
  assert.deepEqual(lines(specializeSource(source)).slice(1), [
    "var o_0_0 = f(0u, 0u, x_0);",
    "var o_0_1 = f(0u, 1u, x_0);",
    "var o_1_0 = f(1u, 0u, x_1);",
    "var o_1_1 = f(1u, 1u, x_1);",
  ]);
  // The count may be a placeholder the host sets; `@if` is resolved first, so a dropped part
  // may name a count that does not exist.
  const flagged = [
    "const N: u32 = 1u;",
    "const F: u32 = 0u;",
    "// @if F",
    "// @unroll I MISSING",
    "// @end",
    "// @endif",
    "// @unroll I N",
    "a_I = I;",
    "// @end",
  ].join("\n");
  assert.deepEqual(lines(specializeSource(flagged, { consts: { N: 3 } })).slice(2), [
    "a_0 = 0u;",
    "a_1 = 1u;",
    "a_2 = 2u;",
  ]);
  // Only the token and the `_X` suffix change: `x.R`, `RR`, `R_` stay.
  assert.deepEqual(lines(specializeSource("// @unroll R 1\nRR + v.R + R_ + R\n// @end")), [
    "RR + v.R + R_ + 0u",
  ]);
  const bad = (source: string, message: RegExp) =>
    assert.throws(() => specializeSource(source, { name: "k" }), message);
  bad("// @unroll I 2\nx;", /@unroll I has no \/\/ @end/);
  bad("x;\n// @end", /unmatched \/\/ @end/);
  bad("// @unroll I COUNT\nx;\n// @end", /unroll count COUNT is no u32 const/);
});

Deno.test("specialize: a kernel name with no wgsl/ file is an error", () => {
  assert.throws(() => specialize("flash_attention"), /no WGSL kernel named flash_attention/);
});

// ---------------------------------------------------------------------------------------------
// The flash table
// ---------------------------------------------------------------------------------------------

/** Every `// @if NAME` of `file` and the files it includes. */
function testedFlags(file: string, seen = new Set<string>()): Set<string> {
  const flags = new Set<string>();
  if (seen.has(file)) return flags;
  seen.add(file);
  const text = WGSL[file];
  for (const m of text.matchAll(/^\s*\/\/ @if (\w+)\s*$/gm)) flags.add(m[1]);
  for (const m of text.matchAll(/^\s*\/\/ @include (\w+)\s*$/gm)) {
    for (const f of testedFlags(m[1] === "storage" ? "storage_f32" : m[1], seen)) flags.add(f);
  }
  return flags;
}

Deno.test("specialize: every flash variant under every device option expands fully", () => {
  const set = new Map<string, Set<string>>();
  let count = 0;
  for (const [dp, rows] of Object.entries(FLASH_VARIANTS)) {
    for (const v of rows) {
      for (const headDim of [Number(dp) - 4, Number(dp)]) {
        for (const [dtype, f16Smem] of [["f16", true], ["f16", false], ["f32", false]] as const) {
          for (const subgroupSize of [0, 16, 32, 64]) {
            const c = flashConfig(v, headDim, f16Smem, subgroupSize);
            for (const dense of [false, true]) {
              const code = flashSource(c, dtype, dense);
              assert.doesNotMatch(code, /^\s*\/\/ @/m, `${c.file} ${JSON.stringify(v)}`);
              assert.match(code, /@compute @workgroup_size\(NT\)\nfn main\(/);
              // Every unrolled register is named by copy: no template suffix survives.
              const text = code.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
              assert.doesNotMatch(text, /\b\w+_[RNCTIUJ]\b/, `${c.file} ${JSON.stringify(v)}`);
              count++;
            }
            const keys = set.get(c.file) ?? new Set(["DENSE"]);
            for (const k of Object.keys(c.consts)) keys.add(k);
            set.set(c.file, keys);
          }
        }
      }
    }
  }
  assert.ok(count > 500, `${count} sources`);
  assert.deepEqual([...set.keys()].sort(), ["flash_chunked", "flash_subgroup", "flash_tiled"]);
  // A flag the WGSL tests but the host never sets would be stuck at its default.
  for (const [file, keys] of set) {
    const unset = [...testedFlags(file)].filter((f) => !keys.has(f));
    assert.deepEqual(unset, [], `${file}: flags the host never sets`);
  }
});

// ---------------------------------------------------------------------------------------------
// Params structs against the host layouts
// ---------------------------------------------------------------------------------------------

/** The host layout of each WGSL file that declares `struct Params`. */
const HOST_LAYOUTS: Record<string, ParamLayout> = {
  flash_io: FLASH_PARAMS,
  pool: POOL_PARAMS,
  draft_map: MAP_PARAMS,
  select_histogram: HIST_PARAMS,
  select_pick: PICK_PARAMS,
  select_lists: LISTS_PARAMS,
  select_row: ROW_PARAMS,
  select_tokens: TOKENS_PARAMS,
  select_tokens_pick: TOKENS_PICK_PARAMS,
  estimate_io: SAMPLED_PARAMS,
};

/** Size and alignment (bytes) of the WGSL types a params struct may hold (uniform layout). */
const WGSL_TYPES: Record<string, [number, number]> = {
  u32: [4, 4],
  i32: [4, 4],
  f32: [4, 4],
  "vec2<u32>": [8, 8],
  "vec2<f32>": [8, 8],
  "vec4<u32>": [16, 16],
  "vec4<f32>": [16, 16],
};

/** `[name, type, offset]` of the fields of `struct Params` in `text`, and the struct's size. */
function wgslParams(text: string, file: string) {
  const body = /^struct Params \{([^}]*)\}/m.exec(text)?.[1];
  assert.ok(body !== undefined, `${file}: no struct Params`);
  const clean = body.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
  const fields: [string, string, number][] = [];
  let offset = 0, align = 4;
  for (const m of clean.matchAll(/(\w+)\s*:\s*([\w<>]+)\s*,?/g)) {
    const t = WGSL_TYPES[m[2]];
    assert.ok(t, `${file}: field ${m[1]} has type ${m[2]}, unknown to this check`);
    offset = Math.ceil(offset / t[1]) * t[1];
    fields.push([m[1], m[2], offset]);
    offset += t[0];
    align = Math.max(align, t[1]);
  }
  // A uniform buffer's struct: size rounded up to 16 bytes.
  return { fields, size: Math.ceil(offset / Math.max(align, 16)) * Math.max(align, 16) };
}

Deno.test("params: every WGSL struct Params matches its host layout, field by field", () => {
  const withParams = Object.keys(WGSL).filter((f) => /^struct Params \{/m.test(WGSL[f])).sort();
  assert.deepEqual(
    withParams,
    Object.keys(HOST_LAYOUTS).sort(),
    "a kernel with a params struct needs its host layout in this test",
  );
  for (const [file, layout] of Object.entries(HOST_LAYOUTS)) {
    const { fields, size } = wgslParams(WGSL[file], file);
    // packParams writes field i at byte 4*i as u32 or f32.
    const host = layout.map(([name, type], i) => [name, type, 4 * i]);
    assert.deepEqual(fields, host, `${file}: WGSL Params vs host layout`);
    assert.equal(size, paramsBytes(layout), `${file}: bytes`);
  }
});

Deno.test("params: the check sees a swapped, retyped or missing field", () => {
  const text = WGSL.draft_map;
  const layout = [...MAP_PARAMS];
  const { fields } = wgslParams(text, "draft_map");
  const host = (l: ParamLayout) => l.map(([name, type], i) => [name, type, 4 * i]);
  assert.deepEqual(fields, host(layout));
  assert.notDeepEqual(fields, host([layout[1], layout[0], ...layout.slice(2)]));
  assert.notDeepEqual(fields, host(layout.map(([n]) => [n, "u32"] as const)));
  assert.notDeepEqual(fields, host(layout.slice(1)));
  // A vec4 field moves the next offsets to its alignment.
  const padded = wgslParams("struct Params {\n  a: u32,\n  b: vec4<f32>,\n  c: f32,\n}", "t");
  assert.deepEqual(padded.fields, [["a", "u32", 0], ["b", "vec4<f32>", 16], ["c", "f32", 32]]);
  assert.equal(padded.size, 48);
});
