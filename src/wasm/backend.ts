/**
 * The WebAssembly backend: draft attention and dense attention in AssemblyScript with SIMD
 * (asm/attention.ts), one (batch, head) at a time on the calling thread.
 *
 * Per batch element, q, k, v are copied into wasm memory as f32 (f16 converted on the way);
 * per head the kernels gather the head's rows into window order, pool, build the draft map,
 * select the mask and its block lists (asm/plan.ts) and run block-sparse flash attention,
 * which writes the output rows back in raster order.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import { densePlan } from "../plan.ts";
import type {
  Backend,
  BackendInfo,
  DenseSpec,
  DraftKernelOp,
  DraftSpec,
  KernelOp,
  MaskResult,
  Plan,
  TensorArray,
} from "../types.ts";
import { type AsmBuild, AsmInstance } from "./instance.ts";

/** Options of {@linkcode createWasmBackend} beyond the contract (tests use `build`). */
export interface WasmBackendOptions {
  /** `"debug"` runs the build with assertions on; default `"release"`. */
  build?: AsmBuild;
  /**
   * Bytes of wasm memory a run may use (default: 4 GiB less 1 MiB). Past it a run stages one
   * head at a time, and past that it rejects with TOO_LARGE. Tests lower it.
   */
  memoryLimit?: number;
}

/** Largest wasm32 memory. */
const WASM_MEMORY = 2 ** 32;
/** Room kept for the module's static data and alignment padding. */
const RESERVED = 1 << 20;

/**
 * How q, k, v and out are staged in wasm memory: a whole batch element at a time (one copy per
 * tensor), or, when that does not fit, one head at a time (HunyuanVideo's 126,976 tokens x 24
 * heads x 128 dims are 1.6 GB per tensor and batch element, but 65 MB per head).
 */
type Staging = "batch" | "head";

/** Byte sizes of the buffers one run allocates, in allocation order. */
function layout(
  asm: AsmInstance,
  spec: DenseSpec,
  plan: Plan,
  draft: boolean,
  staging: Staging,
): Record<string, number> {
  const { tokens: n, headDim: d } = spec;
  const h = staging === "batch" ? spec.heads : 1;
  const { tiles, g } = plan;
  let packed = 0;
  for (let t = 0; t < tiles; t++) packed += Math.ceil(plan.tileLen[t] / 8) * 8 * d;
  const sizes: Record<string, number> = {
    q: n * h * d * 4,
    k: n * h * d * 4,
    v: n * h * d * 4,
    out: n * h * d * 4,
    order: n * 4,
    tileStart: tiles * 4,
    tileLen: tiles * 4,
    offsets: tiles * 4,
    count: tiles * 4,
    list: (draft ? tiles * tiles : tiles) * 4,
    qw: n * d * 4,
    kw: n * d * 4,
    vw: n * d * 4,
    kt: packed * 4,
    scratch: asm.x.flashScratchBytes(d),
  };
  if (draft) {
    sizes.qd = g * d * 4;
    sizes.kd = g * d * 4;
    sizes.kdT = Math.ceil(g / 4) * 4 * d * 4;
    sizes.p = g * g * 4;
    sizes.mask = g * g;
  }
  return sizes;
}

function totalBytes(sizes: Record<string, number>): number {
  let total = 0;
  for (const s of Object.values(sizes)) total += Math.ceil(s / 64) * 64;
  return total;
}

/**
 * Picks the staging and allocates every buffer of a run, or throws TOO_LARGE before allocating
 * anything.
 */
function allocate(
  asm: AsmInstance,
  spec: DenseSpec,
  plan: Plan,
  draft: boolean,
  limit: number,
): { staging: Staging; ptrs: Record<string, number> } {
  let staging: Staging = "batch";
  let sizes = layout(asm, spec, plan, draft, staging);
  if (totalBytes(sizes) > limit) {
    staging = "head";
    sizes = layout(asm, spec, plan, draft, staging);
  }
  const total = totalBytes(sizes);
  if (total > limit) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "tokens",
      `the WebAssembly backend needs ${total} bytes of memory for one head of tokens = ` +
        `${spec.tokens}, headDim = ${spec.headDim}${draft ? `, g = ${plan.g}` : ""}; ` +
        `the limit is ${limit} (WebAssembly memory holds 4 GiB at most)`,
    );
  }
  asm.reset();
  const ptrs: Record<string, number> = {};
  for (const [name, bytes] of Object.entries(sizes)) {
    ptrs[name] = asm.alloc(bytes, `a run (${total} bytes)`);
  }
  return { staging, ptrs };
}

/**
 * Copies head (b, h) between a caller tensor and a staged [tokens][headDim] f32 array
 * (`"in"`: tensor -> staged, `"out"`: staged -> tensor), converting f16 on the way.
 */
function stageHead(
  staged: Float32Array,
  tensor: TensorArray,
  spec: DenseSpec,
  b: number,
  h: number,
  direction: "in" | "out",
): void {
  const { tokens: N, heads: H, headDim: D } = spec;
  if (spec.layout === "BHSD") {
    const base = (b * H + h) * N * D;
    if (direction === "in") staged.set(tensor.subarray(base, base + N * D));
    else tensor.set(staged, base);
    return;
  }
  for (let t = 0; t < N; t++) {
    const base = ((b * N + t) * H + h) * D;
    if (direction === "in") staged.set(tensor.subarray(base, base + D), t * D);
    else tensor.set(staged.subarray(t * D, t * D + D), base);
  }
}

class WasmOp implements DraftKernelOp {
  #disposed = false;
  #mask: Uint8Array | undefined;
  #kept = 0;
  readonly #fixedList: Int32Array;

  constructor(
    readonly backend: WasmBackend,
    readonly spec: DenseSpec,
    readonly plan: Plan,
    readonly keep: number, // 0: dense
  ) {
    // Dense: every query tile visits every tile, one shared list.
    this.#fixedList = Int32Array.from({ length: plan.tiles }, (_, i) => i);
  }

  get draft(): boolean {
    return this.keep > 0;
  }

  run(q: TensorArray, k: TensorArray, v: TensorArray): Promise<TensorArray> {
    try {
      if (this.#disposed) throw new DraftAttentionError("DISPOSED", "op", "used after dispose()");
      return Promise.resolve(this.#run(q, k, v));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #run(q: TensorArray, k: TensorArray, v: TensorArray): TensorArray {
    const { spec, plan, draft } = this;
    const { batch: B, heads: H, headDim: D, tokens: N } = spec;
    const { tiles, g } = plan;
    const asm = this.backend.instance();
    const { staging, ptrs: p } = allocate(asm, spec, plan, draft, this.backend.memoryLimit);
    const x = asm.x;
    const slice = N * H * D;
    const bshd = spec.layout === "BSHD";
    // Element strides of the staged tensors: a batch element in the caller's layout, or one
    // head as [tokens][headDim].
    const strideT = staging === "head" ? D : bshd ? H * D : D;
    const headStride = staging === "head" ? 0 : bshd ? D : N * D;
    const scale = Math.fround(spec.scale);
    const result = spec.dtype === "f16" ? new Float16Array(B * slice) : new Float32Array(B * slice);
    const masks = draft ? new Uint8Array(B * H * g * g) : undefined;
    let kept = 0;

    asm.i32(p.order, N).set(plan.order);
    asm.i32(p.tileStart, tiles).set(plan.tileStart);
    asm.i32(p.tileLen, tiles).set(plan.tileLen);
    x.packedKeyOffsets(p.tileLen, tiles, D, p.offsets);
    if (!draft) {
      asm.i32(p.count, tiles).fill(tiles);
      asm.i32(p.list, tiles).set(this.#fixedList);
    }
    for (let b = 0; b < B; b++) {
      if (staging === "batch") {
        asm.f32(p.q, slice).set(q.subarray(b * slice, (b + 1) * slice));
        asm.f32(p.k, slice).set(k.subarray(b * slice, (b + 1) * slice));
        asm.f32(p.v, slice).set(v.subarray(b * slice, (b + 1) * slice));
      }
      for (let h = 0; h < H; h++) {
        if (staging === "head") {
          for (const [src, ptr] of [[q, p.q], [k, p.k], [v, p.v]] as const) {
            stageHead(asm.f32(ptr, N * D), src, spec, b, h, "in");
          }
        }
        const ho = h * headStride;
        x.gatherRows(p.q, strideT, ho, p.order, N, D, p.qw);
        x.gatherRows(p.k, strideT, ho, p.order, N, D, p.kw);
        x.gatherRows(p.v, strideT, ho, p.order, N, D, p.vw);
        x.packKeys(p.kw, p.tileStart, p.tileLen, tiles, D, p.offsets, p.kt);
        if (draft) {
          x.poolTiles(p.qw, p.tileStart, p.tileLen, g, D, p.qd);
          x.poolTiles(p.kw, p.tileStart, p.tileLen, g, D, p.kd);
          x.draftMap(p.qd, p.kd, g, D, scale, p.kdT, p.p);
          kept += x.selectMask(p.p, g, this.keep, p.mask);
          x.maskToSchedule(p.mask, g, tiles, p.count, p.list);
          masks!.set(asm.u8(p.mask, g * g), (b * H + h) * g * g);
        }
        x.flash(
          p.qw,
          p.kt,
          p.offsets,
          p.vw,
          p.out,
          strideT,
          ho,
          p.order,
          p.tileStart,
          p.tileLen,
          tiles,
          p.count,
          p.list,
          draft ? tiles : 0,
          D,
          scale,
          p.scratch,
        );
        if (staging === "head") stageHead(asm.f32(p.out, N * D), result, spec, b, h, "out");
      }
      if (staging === "batch") result.set(asm.f32(p.out, slice), b * slice);
    }
    if (masks) {
      this.#mask = masks;
      this.#kept = kept;
    }
    return result;
  }

  lastMask(): Promise<MaskResult> {
    if (this.#disposed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "op", "used after dispose()"));
    }
    const { g } = this.plan;
    const n = this.spec.batch * this.spec.heads * g * g;
    // Before the first run: an all-zero mask.
    const mask = this.#mask ? this.#mask.slice() : new Uint8Array(n);
    return Promise.resolve({ g, mask, density: this.#mask ? this.#kept / n : 0 });
  }

  dispose(): void {
    this.#disposed = true;
    this.#mask = undefined;
  }
}

class WasmBackend implements Backend {
  readonly kind = "wasm" as const;
  #asm: AsmInstance | undefined;
  #disposed = false;

  constructor(
    readonly reason: string,
    readonly build: AsmBuild,
    readonly memoryLimit: number,
  ) {}

  /** The module instance, created on first use (its memory grows to the largest run). */
  instance(): AsmInstance {
    if (this.#disposed) {
      throw new DraftAttentionError("DISPOSED", "op", "the backend was disposed");
    }
    if (!this.#asm) this.#asm = new AsmInstance(this.build);
    return this.#asm;
  }

  info(): BackendInfo {
    return {
      backend: "wasm",
      adapter: "WebAssembly SIMD",
      reason: this.reason,
      features: ["simd", "relaxed-simd"],
    };
  }

  dense(spec: DenseSpec): KernelOp {
    return new WasmOp(this, spec, densePlan(spec.tokens), 0);
  }

  draft(spec: DraftSpec, plan: Plan): DraftKernelOp {
    return new WasmOp(this, spec, plan, spec.keep);
  }

  dispose(): void {
    this.#disposed = true;
    this.#asm = undefined;
  }
}

/**
 * Creates the WebAssembly backend. `reason` says why it was chosen (shown by `info()`).
 *
 * @example
 * ```ts
 * import { createWasmBackend } from "./backend.ts";
 * const backend = createWasmBackend("example");
 * const op = backend.dense({
 *   batch: 1, tokens: 3, heads: 1, headDim: 4, layout: "BSHD", dtype: "f32", scale: 0.5,
 * });
 * const x = new Float32Array(12).fill(1);
 * const out = await op.run(x, x, x);
 * console.assert(out.every((y) => Math.abs(y - 1) < 1e-6));
 * backend.dispose();
 * ```
 */
export function createWasmBackend(reason: string, options: WasmBackendOptions = {}): Backend {
  const limit = Math.min(options.memoryLimit ?? Infinity, WASM_MEMORY - RESERVED);
  return new WasmBackend(reason, options.build ?? "release", limit);
}
