/**
 * WGSL specialisation beyond `override` constants: the two things an override cannot express.
 * - The storage type: every kernel that touches q, k, v or out carries the f32 block between
 *   `// @storage-begin` and `// @storage-end` (so each file is valid WGSL as it stands); for f16
 *   the block of wgsl/storage_f16.wgsl replaces it.
 * - Sizes of per-thread register arrays (function-scope arrays need const sizes): a line
 *   `const NAME: u32 = <n>u;` is rewritten with the host's value.
 *
 * @module
 */
import { WGSL } from "../generated/wgsl.ts";
import type { DType } from "../types.ts";

const BEGIN = "// @storage-begin";
const END = "// @storage-end";

/** The marked block: each marker alone on its line. */
function storageBlock(source: string, name: string): { start: number; end: number } {
  const start = source.search(new RegExp(`^${BEGIN}$`, "m"));
  const end = source.search(new RegExp(`^${END}$`, "m"));
  if (start < 0 || end < start) throw new Error(`WGSL ${name} has no storage block`);
  return { start, end: end + END.length };
}

/** Options of {@linkcode specialize}. */
export interface Specialization {
  /** Storage type of the tensors; leaves the source alone when omitted. */
  storage?: DType;
  /** Values of `const NAME: u32 = ...u;` placeholders. */
  consts?: Record<string, number>;
}

/**
 * The source of kernel `name` (a wgsl/ file name without extension), specialised.
 *
 * @example
 * ```ts
 * import { specialize } from "./specialize.ts";
 * const code = specialize("flash_attention", { storage: "f16", consts: { TD4: 4 } });
 * console.assert(code.includes("alias Store4 = vec2<u32>;"));
 * console.assert(code.includes("const TD4: u32 = 4u;"));
 * ```
 */
export function specialize(name: string, options: Specialization = {}): string {
  let code = WGSL[name];
  if (code === undefined) throw new Error(`no WGSL kernel named ${name}`);
  if (options.storage === "f16") {
    const at = storageBlock(code, name);
    const f16 = WGSL["storage_f16"];
    const block = storageBlock(f16, "storage_f16");
    code = code.slice(0, at.start) + f16.slice(block.start, block.end) + code.slice(at.end);
  }
  for (const [key, value] of Object.entries(options.consts ?? {})) {
    const re = new RegExp(`^const ${key}: u32 = \\d+u;$`, "m");
    if (!re.test(code)) throw new Error(`WGSL ${name} has no placeholder const ${key}`);
    code = code.replace(re, `const ${key}: u32 = ${value >>> 0}u;`);
  }
  return code;
}
