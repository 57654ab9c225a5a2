/**
 * WGSL specialisation beyond `override` constants: the things an override cannot express. Six
 * directives, each a whole line (any other line starting `// @` is an error):
 * - `// @include NAME`: replaced by the text of wgsl/NAME.wgsl (includes inside an included
 *   file expanded too), so pieces that several kernels need (the flash kernels' bindings and
 *   block-list iterator, the steps of the register-tiled kernels' `main`, block-list
 *   compaction) are written once. `// @include storage` takes wgsl/storage_f32.wgsl, or
 *   wgsl/storage_f16.wgsl when `storage` is "f16" (`Store4`, `load4`, `store4`).
 * - Placeholders: a line `const NAME: u32 = <n>u;` is rewritten with the host's value (sizes of
 *   per-thread register arrays, which need const sizes, and flags); naming a const the source
 *   does not declare is an error.
 * - `// @if NAME` ... `// @else` ... `// @endif` (the `@else` part optional, blocks nested):
 *   the lines of the first part are kept when the `const NAME: u32 = <n>u;` of the
 *   (specialised) source is non-zero, else those of the `@else` part; resolved before
 *   unrolling, so the dropped part need not type-check (e.g. `enable f16;` and f16 types only
 *   where a setting asks for them). A NAME that is no such const is an error.
 * - `// @unroll X COUNT` ... `// @end`: register tiles as named variables. The lines are
 *   repeated for X = 0..COUNT-1, COUNT a literal or the value of a `const COUNT: u32 = <n>u;` of
 *   the (specialised) source. In copy i, an identifier suffix `_X` becomes `_i` and the token
 *   `X` becomes `iu`. Blocks nest (outer first), so `s_R_N` inside `R` and `N` blocks names one
 *   register per (R, N).
 *
 * @module
 */
import { WGSL } from "../generated/wgsl.ts";
import type { DType } from "../types.ts";

const INCLUDE = /^\s*\/\/ @include (\w+)\s*$/gm;
const DIRECTIVE = /^\s*\/\/ @(\w+)/gm;
const DIRECTIVES = new Set(["include", "if", "else", "endif", "unroll", "end"]);

/** `code` with its `// @include` lines expanded from `files` (see the module doc). */
function includes(
  code: string,
  name: string,
  storage: DType,
  files: Readonly<Record<string, string>>,
  depth = 0,
): string {
  if (depth > 8) throw new Error(`WGSL ${name}: // @include nested too deep`);
  return code.replace(INCLUDE, (_, what: string) => {
    const file = what === "storage" ? `storage_${storage}` : what;
    const text = files[file];
    if (text === undefined) throw new Error(`WGSL ${name}: no WGSL file ${file} to include`);
    return includes(text.replace(/\n$/, ""), name, storage, files, depth + 1);
  });
}

/** Options of {@linkcode specialize}. */
export interface Specialization {
  /** Storage type of the tensors (`// @include storage`); f32 when omitted. */
  storage?: DType;
  /** Values of `const NAME: u32 = ...u;` placeholders. */
  consts?: Record<string, number>;
}

/** Options of {@linkcode specializeSource}. */
export interface SourceSpecialization extends Specialization {
  /** Name of the source in error messages ("source" when omitted). */
  name?: string;
  /** What `// @include NAME` reads, by NAME; the wgsl/ files when omitted. */
  files?: Readonly<Record<string, string>>;
}

/**
 * The source of kernel `name` (a wgsl/ file name without extension), specialised.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { specialize } from "./specialize.ts";
 * const code = specialize("flash_tiled", { storage: "f16", consts: { TD4: 4 } });
 * assert.ok(code.includes("alias Store4 = vec2<u32>;"));
 * assert.ok(code.includes("const TD4: u32 = 4u;"));
 * ```
 */
export function specialize(name: string, options: Specialization = {}): string {
  const source = WGSL[name];
  if (source === undefined) throw new Error(`no WGSL kernel named ${name}`);
  return specializeSource(source, { ...options, name });
}

/**
 * {@linkcode specialize} of the WGSL text `source`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { specializeSource } from "./specialize.ts";
 * const source = "const F: u32 = 0u;\n// @if F\nfn f() {}\n// @else\nfn g() {}\n// @endif";
 * assert.ok(specializeSource(source, { consts: { F: 1 } }).includes("fn f() {}"));
 * assert.ok(specializeSource(source).includes("fn g() {}"));
 * ```
 */
export function specializeSource(source: string, options: SourceSpecialization = {}): string {
  const name = options.name ?? "source";
  let code = includes(source, name, options.storage ?? "f32", options.files ?? WGSL);
  for (const m of code.matchAll(DIRECTIVE)) {
    if (!DIRECTIVES.has(m[1])) throw new Error(`WGSL ${name}: unknown directive // @${m[1]}`);
  }
  for (const [key, value] of Object.entries(options.consts ?? {})) {
    const re = new RegExp(`^const ${key}: u32 = \\d+u;$`, "m");
    if (!re.test(code)) throw new Error(`WGSL ${name} has no placeholder const ${key}`);
    code = code.replace(re, `const ${key}: u32 = ${value >>> 0}u;`);
  }
  // Both passes run on every source, so that a stray `@else`, `@endif` or `@end` is an error.
  return unroll(conditionals(code, name), name);
}

const IF = /^\s*\/\/ @if ([A-Za-z]\w*)\s*$/;
const ELSE = /^\s*\/\/ @else\s*$/;
const ENDIF = /^\s*\/\/ @endif\s*$/;

/** Resolves the `// @if` blocks of `code` (see the module doc). */
function conditionals(code: string, name: string): string {
  const consts = new Map<string, number>();
  for (const m of code.matchAll(/^const (\w+): u32 = (\d+)u;$/gm)) consts.set(m[1], Number(m[2]));
  const out: string[] = [];
  /** Per open block: whether its condition holds, whether we are past its `@else`. */
  const stack: { cond: boolean; inElse: boolean }[] = [];
  const keeping = () => stack.every((b) => b.cond !== b.inElse);
  for (const line of code.split("\n")) {
    const head = IF.exec(line);
    if (head) {
      const value = consts.get(head[1]);
      if (value === undefined) throw new Error(`WGSL ${name}: @if ${head[1]} is no u32 const`);
      stack.push({ cond: value !== 0, inElse: false });
    } else if (ELSE.test(line)) {
      if (!stack.length || stack.at(-1)!.inElse) throw new Error(`WGSL ${name}: stray // @else`);
      stack.at(-1)!.inElse = true;
    } else if (ENDIF.test(line)) {
      if (!stack.pop()) throw new Error(`WGSL ${name}: unmatched // @endif`);
    } else if (keeping()) {
      out.push(line);
    }
  }
  if (stack.length) throw new Error(`WGSL ${name}: // @if without // @endif`);
  return out.join("\n");
}

const UNROLL = /^\s*\/\/ @unroll ([A-Za-z]\w*) (\w+)\s*$/;
const END_BLOCK = /^\s*\/\/ @end\s*$/;

/** Expands the `// @unroll` blocks of `code` (see the module doc). */
function unroll(code: string, name: string): string {
  const consts = new Map<string, number>();
  for (const m of code.matchAll(/^const (\w+): u32 = (\d+)u;$/gm)) consts.set(m[1], Number(m[2]));
  const expand = (lines: string[]): string[] => {
    const out: string[] = [];
    for (let i = 0; i < lines.length; i++) {
      const head = UNROLL.exec(lines[i]);
      if (!head) {
        if (END_BLOCK.test(lines[i])) throw new Error(`WGSL ${name}: unmatched // @end`);
        out.push(lines[i]);
        continue;
      }
      let depth = 1, j = i + 1;
      for (; j < lines.length; j++) {
        if (UNROLL.test(lines[j])) depth++;
        else if (END_BLOCK.test(lines[j]) && --depth === 0) break;
      }
      if (j === lines.length) throw new Error(`WGSL ${name}: // @unroll ${head[1]} has no // @end`);
      const [, x, what] = head;
      const count = /^\d+$/.test(what) ? Number(what) : consts.get(what);
      if (count === undefined) {
        throw new Error(`WGSL ${name}: unroll count ${what} is no u32 const`);
      }
      const suffix = new RegExp(`_${x}(?![A-Za-z0-9])`, "g");
      const token = new RegExp(`(?<![\\w.])${x}(?!\\w)`, "g");
      const body = lines.slice(i + 1, j);
      for (let c = 0; c < count; c++) {
        out.push(...expand(body.map((l) => l.replace(suffix, `_${c}`).replace(token, `${c}u`))));
      }
      i = j;
    }
    return out;
  };
  return expand(code.split("\n")).join("\n");
}
