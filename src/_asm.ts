/**
 * Loads the AssemblyScript module (asm/, embedded by scripts/build.ts) and wraps one instance:
 * typed exports, a bump allocator over its memory and fresh typed-array views (a view made
 * before `memory.grow` is detached, so views are made after the last allocation of a call).
 *
 * Each build exists twice: with relaxed SIMD (fused multiply-add where the CPU has it) and with
 * plain fixed-width SIMD, for engines without relaxed SIMD (Safari, Node before 22). The engine
 * is asked once, by validating a 40-byte module that uses `f32x4.relaxed_madd`. An engine without
 * SIMD at all gets a `NO_BACKEND` error instead of a raw `CompileError`.
 *
 * @module
 */
import { ASM_RELEASE } from "./generated/asm_release.ts";
import { ASM_RELEASE_PLAIN } from "./generated/asm_release_plain.ts";
import { ASM_THREADS } from "./generated/asm_threads.ts";
import { ASM_THREADS_PLAIN } from "./generated/asm_threads_plain.ts";
import { DraftAttentionError } from "./errors.ts";

/**
 * Which build of asm/: `"release"` (-O3, no assertions), `"debug"` (assertions, for tests: not
 * shipped, test/_asm_debug.ts provides it) or `"threads"` (release importing a shared
 * `env.memory`, for worker threads: see src/wasm/pool.ts).
 */
export type AsmBuild = "release" | "debug" | "threads";

/** Which SIMD the engine runs: `"relaxed"` (relaxed SIMD too), `"plain"` or `"none"`. */
export type AsmSimd = "relaxed" | "plain" | "none";

/**
 * `(func (result v128) (f32x4.relaxed_madd (i32x4.splat 0) (i32x4.splat 0) (i32x4.splat 0)))`;
 * the plain probe is the same with `f32x4.add` of two splats.
 */
const PROBE_HEAD = [0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 5, 1, 0x60, 0, 1, 0x7b, 3, 2, 1, 0];
const SPLAT = [0x41, 0, 0xfd, 0x11];
const RELAXED_BODY = [0, ...SPLAT, ...SPLAT, ...SPLAT, 0xfd, 0x85, 0x02, 0x0b];
const PLAIN_BODY = [0, ...SPLAT, ...SPLAT, 0xfd, 0xe4, 0x01, 0x0b];

function probe(body: number[]): boolean {
  const code = [10, body.length + 2, 1, body.length, ...body];
  try {
    return WebAssembly.validate(new Uint8Array([...PROBE_HEAD, ...code]));
  } catch {
    return false;
  }
}

let detected: AsmSimd | undefined;
let forced: AsmSimd | undefined;

/** The SIMD level the next instance uses: the engine's (asked once), or the test hook's. */
export function asmSimd(): AsmSimd {
  if (forced) return forced;
  detected ??= probe(RELAXED_BODY) ? "relaxed" : probe(PLAIN_BODY) ? "plain" : "none";
  return detected;
}

/**
 * Test hook: instances created from now on use the `"plain"` builds (or fail as `"none"` would),
 * whatever the engine supports; `undefined` goes back to detection. Only a level the engine
 * runs can be forced (`"relaxed"` where it lacks relaxed SIMD would not compile).
 */
export function forceAsmSimd(level: AsmSimd | undefined): void {
  forced = level;
}

/** Base64 of builds that are not shipped (the debug build), given by the tests. */
const provided = new Map<AsmBuild, string>();

/**
 * Test hook: makes `build` loadable from `base64` (test/_asm_debug.ts provides `"debug"` from
 * src/generated/asm_debug.ts, which no runtime module imports).
 */
export function provideAsmBuild(build: AsmBuild, base64: string): void {
  provided.set(build, base64);
}

/** The exports of asm/index.ts. Pointers are byte offsets; the host reads them with `>>> 0`. */
export interface AsmExports {
  memory: WebAssembly.Memory;
  alloc(bytes: number): number;
  reset(): void;
  planBuild(
    frames: number,
    height: number,
    width: number,
    text: number,
    textBefore: number,
    poolH: number,
    poolW: number,
    order: number,
    inverse: number,
    tileStart: number,
    tileLen: number,
  ): number;
  planPieces(
    batch: number,
    tokens: number,
    heads: number,
    headDim: number,
    elemBytes: number,
    bshd: number,
    maxBytes: number,
    perPairBytes: number,
    sizes: number,
    out: number,
  ): number;
  kthLargestBits(p: number, n: number, keep: number): number;
  selectMask(p: number, g: number, keep: number, mask: number): number;
  maskToSchedule(mask: number, g: number, tiles: number, count: number, list: number): void;
  workItemCount(tileLen: number, tiles: number, rowsPerItem: number): number;
  workItemsFill(
    tileStart: number,
    tileLen: number,
    tiles: number,
    rowsPerItem: number,
    out: number,
  ): void;
  gatherRows(
    src: number,
    strideT: number,
    headOffset: number,
    order: number,
    tokens: number,
    headDim: number,
    dst: number,
  ): void;
  packedKeyOffsets(tileLen: number, tiles: number, headDim: number, offsets: number): number;
  packKeys(
    kw: number,
    tileStart: number,
    tileLen: number,
    tiles: number,
    headDim: number,
    offsets: number,
    kt: number,
  ): void;
  poolTiles(
    x: number,
    tileStart: number,
    tileLen: number,
    g: number,
    headDim: number,
    out: number,
  ): void;
  draftMap(
    qd: number,
    kd: number,
    g: number,
    headDim: number,
    scale: number,
    kdT: number,
    p: number,
  ): void;
  prepTiles(
    q: number,
    k: number,
    v: number,
    strideT: number,
    headOffset: number,
    order: number,
    tileStart: number,
    tileLen: number,
    offsets: number,
    t0: number,
    t1: number,
    g: number,
    headDim: number,
    qw: number,
    kw: number,
    vw: number,
    kt: number,
    qd: number,
    kd: number,
  ): void;
  flashScratchBytes(headDim: number): number;
  flashBlock(
    qw: number,
    kt: number,
    offsets: number,
    vw: number,
    out: number,
    strideT: number,
    headOffset: number,
    order: number,
    tileStart: number,
    tileLen: number,
    tile: number,
    rowStart: number,
    rows: number,
    count: number,
    list: number,
    listStride: number,
    headDim: number,
    scale: number,
    scratch: number,
  ): void;
  flash(
    qw: number,
    kt: number,
    offsets: number,
    vw: number,
    out: number,
    strideT: number,
    headOffset: number,
    order: number,
    tileStart: number,
    tileLen: number,
    tiles: number,
    count: number,
    list: number,
    listStride: number,
    headDim: number,
    scale: number,
    scratch: number,
  ): void;
}

const modules = new Map<string, WebAssembly.Module>();

function decodeBase64(s: string): Uint8Array<ArrayBuffer> {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function base64Of(build: AsmBuild, simd: AsmSimd): string {
  if (simd === "none") {
    throw new DraftAttentionError(
      "NO_BACKEND",
      "backend",
      "this engine's WebAssembly has no SIMD (fixed-width 128-bit SIMD is required: Chrome 91, " +
        "Firefox 89, Safari 16.4, Node 16.4, Deno 1.9 or later)",
    );
  }
  if (build === "release") return simd === "relaxed" ? ASM_RELEASE : ASM_RELEASE_PLAIN;
  if (build === "threads") return simd === "relaxed" ? ASM_THREADS : ASM_THREADS_PLAIN;
  const text = provided.get(build);
  if (text === undefined) {
    throw new Error(
      `asm: the ${build} build is not shipped; import test/_asm_debug.ts to provide it`,
    );
  }
  return text;
}

/**
 * The compiled module of one build at one SIMD level (default: {@linkcode asmSimd}), compiled
 * once per process. Throws NO_BACKEND where the engine has no WebAssembly SIMD.
 */
export function asmModule(build: AsmBuild, simd: AsmSimd = asmSimd()): WebAssembly.Module {
  const key = `${build}:${simd}`;
  let m = modules.get(key);
  if (!m) {
    m = new WebAssembly.Module(decodeBase64(base64Of(build, simd)));
    modules.set(key, m);
  }
  return m;
}

/**
 * The shared memory of the `"threads"` build and its largest size in bytes: 4 GiB (reserved, not
 * committed), or less
 * where the engine refuses that much address space; undefined where shared memory is
 * unavailable (a browser page without cross-origin isolation).
 */
export function sharedMemory(): { memory: WebAssembly.Memory; bytes: number } | undefined {
  for (const maximum of [65536, 32768, 16384]) {
    try {
      return {
        memory: new WebAssembly.Memory({ initial: 1, maximum, shared: true }),
        bytes: maximum * 65536,
      };
    } catch {
      // try a smaller reservation
    }
  }
  return undefined;
}

/**
 * One instance of asm/: its own memory, or for `"threads"` the shared `memory` given; `simd`
 * picks the relaxed or plain build (default: what the engine runs).
 */
export class AsmInstance {
  readonly x: AsmExports;

  constructor(
    readonly build: AsmBuild = "release",
    memory?: WebAssembly.Memory,
    readonly simd: AsmSimd = asmSimd(),
  ) {
    let x: AsmExports | undefined = undefined;
    if ((build === "threads") !== (memory !== undefined)) {
      throw new Error(`asm: the ${build} build ${memory ? "takes no" : "needs a"} memory`);
    }
    const imports = {
      env: {
        ...(memory ? { memory } : {}),
        // AssemblyScript's `assert` and `abort`: message and file are UTF-16 strings whose byte
        // length sits 4 bytes before the pointer.
        abort(msg: number, file: number, line: number, col: number): never {
          const str = (p: number): string => {
            if (!x || p === 0) return "";
            p >>>= 0;
            const n = new Uint32Array(x.memory.buffer, p - 4, 1)[0] >>> 1;
            return String.fromCharCode(...new Uint16Array(x.memory.buffer, p, n).slice());
          };
          throw new Error(`asm abort: ${str(msg)} at ${str(file)}:${line}:${col}`);
        },
      },
    };
    const instance = new WebAssembly.Instance(asmModule(build, simd), imports);
    x = instance.exports as unknown as AsmExports;
    this.x = x;
  }

  /** Frees every allocation. */
  reset(): void {
    this.x.reset();
  }

  /**
   * Allocates `bytes` bytes (64-byte aligned, not cleared); throws TOO_LARGE when wasm memory
   * cannot hold them. `what` names the request in the message.
   */
  alloc(bytes: number, what: string): number {
    const ptr = bytes > 2 ** 32 ? 0 : this.x.alloc(bytes) >>> 0;
    if (ptr === 0) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "tokens",
        `${what} needs more WebAssembly memory than is available (4 GiB at most)`,
      );
    }
    return ptr;
  }

  /** Bytes of linear memory now. */
  get memoryBytes(): number {
    return this.x.memory.buffer.byteLength;
  }

  /**
   * The memory's current buffer (replaced on every `memory.grow`; a SharedArrayBuffer for the
   * `"threads"` build, typed here as ArrayBuffer since the views are used the same way).
   */
  get buffer(): ArrayBuffer {
    return this.x.memory.buffer as ArrayBuffer;
  }

  f32(ptr: number, n: number): Float32Array<ArrayBuffer> {
    return new Float32Array(this.buffer, ptr, n);
  }

  f64(ptr: number, n: number): Float64Array<ArrayBuffer> {
    return new Float64Array(this.buffer, ptr, n);
  }

  i32(ptr: number, n: number): Int32Array<ArrayBuffer> {
    return new Int32Array(this.buffer, ptr, n);
  }

  u8(ptr: number, n: number): Uint8Array<ArrayBuffer> {
    return new Uint8Array(this.buffer, ptr, n);
  }
}
