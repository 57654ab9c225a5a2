/**
 * The public entry point: `openRuntime()` picks a backend (WebGPU or WebAssembly) and returns a
 * `Runtime` that builds attention ops. Inputs are validated here, once, for both backends.
 *
 * @module
 */
import { arrayView, describeValue, DraftAttentionError } from "./errors.ts";
import { getModel } from "./models.ts";
import { buildPlan } from "./plan.ts";
import {
  checkKeys,
  positiveInt,
  resolveDense,
  resolveDraft,
  tensorElements,
  TEXT_TILE,
} from "./validate.ts";
import { createWasmBackend } from "./wasm/backend.ts";
import { createWebGpuBackend } from "./webgpu/backend.ts";
import type {
  AttentionOptions,
  Backend,
  BackendInfo,
  BackendKind,
  DenseSpec,
  DraftAttentionOptions,
  DraftKernelOp,
  DraftSpec,
  GpuRunArgs,
  KernelOp,
  MaskResult,
  Plan,
  RunOptions,
  TensorArray,
} from "./types.ts";

/** Options of {@linkcode openRuntime}. */
export interface RuntimeOptions {
  /**
   * `"auto"` (default) takes WebGPU on a hardware adapter and WebAssembly when there is no
   * adapter or only a software fallback (WASM SIMD is ~10x faster than WGSL on llvmpipe).
   * `"webgpu"` insists on WebGPU (a software adapter included); `"wasm"` never touches WebGPU.
   */
  backend?: "auto" | BackendKind;
  /** A caller's own device, used as is (implies WebGPU). */
  device?: GPUDevice;
  /**
   * `"adapter"` (default) requests the adapter's limits; `"default"` keeps WebGPU's default
   * limits (16 KiB workgroup memory, 128 MiB bindings), as small and integrated GPUs give.
   */
  limits?: "adapter" | "default";
  /**
   * WebAssembly: threads per run, the calling thread included (an integer >= 1; default
   * `navigator.hardwareConcurrency`, every core). More than 1 runs big ops on module workers
   * sharing one WebAssembly memory (small ops stay on the calling thread); `1` never starts a
   * worker. Without workers or shared memory (a page that is not cross-origin isolated) runs
   * use one thread. Idle workers end after 2 s and never keep the process alive. WebGPU ignores
   * it.
   */
  threads?: number;
}

/** Limits that the kernels use when the adapter offers more than the defaults. */
const WANTED_LIMITS = [
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
] as const;

/** Optional features requested when offered. `subgroups` works in Deno although unlisted. */
const WANTED_FEATURES = ["shader-f16", "timestamp-query", "subgroups"] as const;

/** An attention op bound to one size; build once, run many times. */
export interface AttentionOp {
  /**
   * Computes attention on typed arrays; resolves to a new array of the same type and layout.
   * q, k and v are checked and taken before `run()` returns (a NaN, an infinity or values
   * whose logits could overflow f32 reject with `INVALID_INPUT`): written where the run reads
   * them (the op's GPU input buffers, WebAssembly memory), or copied when the run must wait
   * behind an earlier one. So the caller may overwrite them at once: the run computes what was
   * checked, however long it waits.
   * `options.layer` names the transformer layer of the run (checked against a reused mask, see
   * {@linkcode RunOptions}).
   */
  run(q: TensorArray, k: TensorArray, v: TensorArray, options?: RunOptions): Promise<TensorArray>;
  /**
   * WebGPU only: reads caller-owned buffers and writes `out`, with no readback. Runs issued back
   * to back are submitted without waiting for each other (the GPU queue keeps their order); the
   * promise settles once WebGPU has checked this run, with its own errors. The buffers are read
   * when the run executes, not copied: a `queue.writeBuffer` to them issued after `run()` lands
   * after the run only if `run()` submitted first, so leave them alone until the promise settles.
   */
  run(buffers: GpuRunArgs): Promise<void>;
  /** Frees the op's buffers; later calls reject with code `DISPOSED`. */
  dispose(): void;
  /** The resolved request: every default filled in (tokens, scale, ...). */
  readonly spec: Readonly<DenseSpec>;
}

/** A draft-attention op: like {@linkcode AttentionOp}, plus the mask of the last run. */
export interface DraftAttentionOp extends AttentionOp {
  /** The block mask of the last `run()`, read back only when asked. */
  lastMask(): Promise<MaskResult>;
  /** Draft tokens (video blocks) of this geometry. */
  readonly g: number;
  /** The resolved request, geometry included. */
  readonly spec: Readonly<DraftSpec>;
}

/** A backend plus the op factories. */
export interface Runtime {
  /** The backend chosen. */
  readonly backend: BackendKind;
  /** The WebGPU device in use (to create `GPUBuffer`s for `run({ q, k, v, out })`). */
  readonly device: GPUDevice | undefined;
  /** What was chosen and why, adapter, features and limits. */
  describe(): BackendInfo;
  /** Dense (exact) attention. */
  attention(options: AttentionOptions): AttentionOp;
  /** DraftAttention: draft map, block mask, block-sparse attention. */
  draftAttention(options: DraftAttentionOptions): DraftAttentionOp;
  /** Releases the backend (and the device, when the runtime created it). */
  dispose(): void;
}

function isGpuBuffer(x: unknown): x is GPUBuffer {
  return typeof GPUBuffer !== "undefined" && x instanceof GPUBuffer;
}

/**
 * Index of the first NaN or infinity of `x`, or -1. Reads the exponent bits through an integer
 * view (no float compares): about 1 ns per element, far below the cost of the attention run.
 */
export function firstNonFinite(x: TensorArray): number {
  if (x instanceof Float32Array) {
    const u = new Int32Array(x.buffer, x.byteOffset, x.length);
    for (let i = 0; i < u.length; i++) if ((u[i] & 0x7f800000) === 0x7f800000) return i;
  } else {
    // Two halves per 32-bit read where aligned: an exponent of all ones (0x7c00) is the only
    // one that carries into bit 15 of its half when 0x0400 is added.
    let i = 0;
    if (x.byteOffset % 4 === 0) {
      const w = new Int32Array(x.buffer, x.byteOffset, x.length >>> 1);
      let j = 0;
      for (; j < w.length; j++) if ((((w[j] & 0x7c007c00) + 0x04000400) & 0x80008000) !== 0) break;
      i = 2 * j; // the pair holding the first bad half, or the odd tail
    }
    const u = new Uint16Array(x.buffer, x.byteOffset, x.length);
    for (; i < u.length; i++) if ((u[i] & 0x7c00) === 0x7c00) return i;
  }
  return -1;
}

/** `(b, t, h, d)` of flat element `i` of a tensor of `spec`, for messages. */
function coordsOf(i: number, spec: DenseSpec): string {
  const { tokens: N, heads: H, headDim: D } = spec;
  const d = i % D;
  const r = Math.floor(i / D);
  const [t, h] = spec.layout === "BSHD"
    ? [Math.floor(r / H) % N, r % H]
    : [r % N, Math.floor(r / N) % H];
  return `(b=${Math.floor(i / (N * H * D))}, t=${t}, h=${h}, d=${d})`;
}

/**
 * Largest logit bound accepted, `2^120` (about 1.3e36): `headDim * max|q| * max|k| * scale` and
 * `tokens * max|v|` must stay below it. Past f32's range (about 2^128) a logit or an unnormalised
 * P V sum becomes infinite and the softmax gives inf - inf = NaN, which the kernels turn into
 * zero rows (both backends did from logits of 2^126 in a 65-token test); the margin of 2^8
 * covers the kernels' base-2 rescaling of the logits and the difference of two logits.
 */
export const MAX_LOGIT = 2 ** 120;

const bits = new Int32Array(1);
const asF32 = new Float32Array(bits.buffer);

/** The f32 value of magnitude bits `b` (sign cleared). */
function f32Of(b: number): number {
  bits[0] = b;
  return asF32[0];
}

/**
 * The largest `|x|` of an array known to be finite: the magnitude bits of non-negative IEEE
 * floats order like integers, so the scan compares integers. f16 values all fit f32.
 */
function maxAbsF16(x: Float16Array): number {
  const u = new Uint16Array(x.buffer, x.byteOffset, x.length);
  let m = 0;
  for (let i = 0; i < u.length; i++) {
    const a = u[i] & 0x7fff;
    if (a > m) m = a;
  }
  return Math.abs(new Float16Array(new Uint16Array([m]).buffer)[0]);
}

/**
 * The largest `|x|` of `x` and the index of its first NaN or infinity (-1 when none), in one
 * pass over the bits for f32 (a non-finite value has the largest magnitude bits); for f16 the
 * pass of {@linkcode firstNonFinite}, and the maximum only when `needMax` (f16 inputs cannot
 * overflow f32 logits unless `scale` is huge).
 */
function scan(x: TensorArray, needMax: boolean): { bad: number; max: number } {
  if (x instanceof Float32Array) {
    const u = new Int32Array(x.buffer, x.byteOffset, x.length);
    let m = 0;
    for (let i = 0; i < u.length; i++) {
      const a = u[i] & 0x7fffffff;
      if (a > m) m = a;
    }
    if (m >= 0x7f800000) return { bad: firstNonFinite(x), max: Infinity };
    return { bad: -1, max: f32Of(m) };
  }
  const bad = firstNonFinite(x);
  return { bad, max: bad >= 0 ? Infinity : needMax ? maxAbsF16(x) : 65504 };
}

/**
 * Checks one typed-array input and returns a view of exactly its elements. The view is read
 * before `run()` returns (the backend writes it where the run reads it, or copies it when the
 * run must wait: see src/_snapshot.ts), and no caller code runs between this check and that
 * read, so the caller may overwrite its array as soon as `run()` returns and what was checked is
 * what runs. An array on a `SharedArrayBuffer` is copied first, since another thread could write
 * it between the check and the read. The array is read through its internal slots (a `Proxy`,
 * an overridden `length` or a detached buffer gives INVALID_INPUT naming the tensor, never a raw
 * TypeError).
 */
function inputArray(field: string, x: unknown, spec: DenseSpec): TensorArray {
  const want = spec.dtype === "f16" ? Float16Array : Float32Array;
  let view;
  try {
    view = arrayView(x);
  } catch (e) {
    // Unreachable by construction (the getters throw only for non-typed arrays); kept so that
    // nothing raw leaves run().
    throw new DraftAttentionError("INVALID_INPUT", field, `cannot be read: ${e}`, { cause: e });
  }
  if (!view || view.name !== want.name) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `must be a ${want.name} for dtype "${spec.dtype}", got ${describeValue(x)}` +
        (!view && ArrayBuffer.isView(x) === false && isProxyLike(x)
          ? " (a Proxy or an object posing as a typed array; pass the typed array itself)"
          : ""),
    );
  }
  const n = tensorElements(spec);
  if (view.length !== n) {
    const shape = spec.layout === "BSHD"
      ? `[${spec.batch}, ${spec.tokens}, ${spec.heads}, ${spec.headDim}]`
      : `[${spec.batch}, ${spec.heads}, ${spec.tokens}, ${spec.headDim}]`;
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `must hold ${n} elements (${spec.layout} ${shape}), got ${view.length}` +
        ((view.buffer as ArrayBuffer).detached ? " (its ArrayBuffer is detached)" : ""),
    );
  }
  try {
    const x = new want(view.buffer as ArrayBuffer, view.byteOffset, n);
    // A page that is not cross-origin isolated has no SharedArrayBuffer (nor arrays on one).
    const shared = typeof SharedArrayBuffer === "function" &&
      view.buffer instanceof SharedArrayBuffer;
    return shared ? x.slice() : x;
  } catch (e) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `cannot be read: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
  }
}

/** Whether `x` claims to be a typed array without being one (a proxy, a look-alike). */
function isProxyLike(x: unknown): boolean {
  try {
    return typeof x === "object" && x !== null &&
      Object.prototype.isPrototypeOf.call(TYPED_ARRAY_PROTO, x);
  } catch {
    return true; // a revoked proxy
  }
}

const TYPED_ARRAY_PROTO = Object.getPrototypeOf(Uint8Array.prototype) as object;

/**
 * Checks q, k and v (views of them, see {@linkcode inputArray}): each finite (a NaN or an infinity is named with its
 * `(b, t, h, d)`), and small enough that no logit and no unnormalised P V sum leaves f32's range
 * ({@linkcode MAX_LOGIT}); such inputs are rejected rather than run into zero rows.
 */
function inputs(q: unknown, k: unknown, v: unknown, spec: DenseSpec): TensorArray[] {
  const arrays = [inputArray("q", q, spec), inputArray("k", k, spec), inputArray("v", v, spec)];
  // Only f32 storage (or a huge scale) can overflow: f16 holds at most 65504.
  const f16Safe = spec.dtype === "f16" &&
    spec.headDim * 65504 * 65504 * spec.scale <= MAX_LOGIT && spec.tokens * 65504 <= MAX_LOGIT;
  const max: number[] = [];
  for (const [i, field] of (["q", "k", "v"] as const).entries()) {
    const { bad, max: m } = scan(arrays[i], !f16Safe);
    const x = arrays[i];
    if (bad >= 0) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        field,
        `holds ${x[bad]} at index ${bad} ${coordsOf(bad, spec)}; inputs must be finite`,
      );
    }
    max.push(m);
  }
  const [mq, mk, mv] = max;
  const logit = spec.headDim * mq * mk * spec.scale;
  if (logit > MAX_LOGIT) {
    const field = mk > mq ? "k" : "q";
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `max |q| = ${mq} and max |k| = ${mk} bound the logits by headDim * |q| * |k| * scale = ` +
        `${logit.toExponential(3)}, beyond 2^120 (f32 overflows at ~2^128 and would give zero ` +
        `rows); scale the inputs down`,
    );
  }
  if (spec.tokens * mv > MAX_LOGIT) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "v",
      `max |v| = ${mv} times ${spec.tokens} tokens = ${(spec.tokens * mv).toExponential(3)} ` +
        `exceeds 2^120: the f32 accumulators of P V could overflow; scale v down`,
    );
  }
  return arrays;
}

class Op implements DraftAttentionOp {
  #disposed = false;
  #kernel: KernelOp | DraftKernelOp | undefined;
  /** Backend generation `#kernel` was built on. */
  #gen = -1;
  readonly g: number;

  constructor(
    readonly rt: RuntimeImpl,
    readonly spec: DraftSpec,
    /** The plan of a draft op; undefined for dense attention. */
    readonly plan: Plan | undefined,
  ) {
    this.g = plan?.g ?? 0;
  }

  /** The kernel on `backend` (generation `gen`), built on first use and after a recovery. */
  kernelOn(backend: Backend, gen: number): KernelOp | DraftKernelOp {
    if (this.#kernel === undefined || this.#gen !== gen) {
      // A kernel of an earlier device was disposed with its backend; disposing is idempotent.
      this.#kernel?.dispose();
      this.#kernel = undefined;
      this.#kernel = this.plan ? backend.draft(this.spec, this.plan) : backend.dense(this.spec);
      this.#gen = gen;
    }
    return this.#kernel;
  }

  #check(): void {
    if (this.#disposed || this.rt.disposed) {
      throw new DraftAttentionError("DISPOSED", "op", "used after dispose()");
    }
  }

  /**
   * Runs `fn` on the current kernel; every failure leaves as a DraftAttentionError. When the
   * backend is usable now, `fn` is called before this returns (a typed-array run takes its
   * inputs during that call); during a recovery, once the new backend is up.
   */
  async #call<T>(fn: (kernel: KernelOp | DraftKernelOp) => Promise<T>): Promise<T> {
    let gen: number | undefined;
    try {
      // No await before fn on the usual path: an async function runs synchronously up to its
      // first await.
      const kernel = this.rt.kernelNow(this) ?? await this.rt.kernelFor(this);
      gen = this.#gen;
      return await fn(kernel);
    } catch (e) {
      if (this.#disposed || this.rt.disposed) {
        // Disposed while the call was pending: whatever broke, the answer is DISPOSED.
        throw e instanceof DraftAttentionError && e.code === "DISPOSED"
          ? e
          : new DraftAttentionError("DISPOSED", "op", "disposed during a run", { cause: e });
      }
      throw gen === undefined ? e : await this.rt.failed(e, gen);
    }
  }

  run(q: TensorArray, k: TensorArray, v: TensorArray, options?: RunOptions): Promise<TensorArray>;
  run(buffers: GpuRunArgs): Promise<void>;
  run(
    a: TensorArray | GpuRunArgs,
    k?: TensorArray,
    v?: TensorArray,
    options?: RunOptions,
  ): Promise<TensorArray | void> {
    try {
      this.#check();
      if (!ArrayBuffer.isView(a) && typeof a === "object" && a !== null && k === undefined) {
        const args = a as GpuRunArgs;
        if (args.layer !== undefined) positiveInt("layer", args.layer, 0);
        if (this.rt.backend !== "webgpu") {
          throw new DraftAttentionError(
            "UNSUPPORTED",
            "q",
            `GPUBuffer inputs need the webgpu backend; this runtime uses ${this.rt.backend}`,
          );
        }
        const bufs = {} as GpuRunArgs;
        for (const f of ["q", "k", "v", "out"] as const) {
          let value: unknown;
          let ok = false;
          try {
            value = args[f];
            ok = isGpuBuffer(value);
          } catch (e) {
            // A proxy whose traps throw: named, not passed on raw.
            throw new DraftAttentionError(
              "INVALID_INPUT",
              f,
              `cannot be read: ${e instanceof Error ? e.message : String(e)}`,
              { cause: e },
            );
          }
          if (!ok) {
            throw new DraftAttentionError(
              "INVALID_INPUT",
              f,
              `must be a GPUBuffer, got ${describeValue(value)}`,
            );
          }
          bufs[f] = value as GPUBuffer;
        }
        bufs.layer = args.layer;
        return this.#call((kernel) => {
          if (!kernel.runBuffers) {
            throw new DraftAttentionError(
              "UNSUPPORTED",
              "q",
              `GPUBuffer inputs need the webgpu backend; this runtime uses ${this.rt.backend}`,
            );
          }
          return kernel.runBuffers(bufs);
        });
      }
      if (options !== undefined && (typeof options !== "object" || options === null)) {
        throw new DraftAttentionError(
          "INVALID_OPTION",
          "options",
          `must be an object { layer }, got ${describeValue(options)}`,
        );
      }
      if (options !== undefined) checkKeys("run", options);
      const layer = options?.layer;
      if (layer !== undefined) positiveInt("layer", layer, 0);
      // Checked now, and taken by the kernel's run() before this returns (KernelOp.run): later
      // writes to the caller's arrays (a NaN included) do not reach this run, however long it
      // waits in the op's queue. Only while a lost device is being replaced does the kernel
      // come later: then the run reads copies.
      const taken = inputs(a, k, v, this.spec);
      const [qs, ks, vs] = this.rt.recovering ? taken.map((x) => x.slice()) : taken;
      return this.#call((kernel) => kernel.run(qs, ks, vs, { layer }));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  lastMask(): Promise<MaskResult> {
    try {
      this.#check();
      if (!this.plan) {
        throw new DraftAttentionError("UNSUPPORTED", "op", "dense attention has no mask");
      }
      return this.#call((kernel) => (kernel as DraftKernelOp).lastMask());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#kernel?.dispose();
    this.#kernel = undefined;
    this.rt.forget(this);
  }
}

/** Fills the fields a bundled model profile supplies; explicit fields win. */
function withModel(options: DraftAttentionOptions): DraftAttentionOptions {
  if (typeof options !== "object" || options === null || options.model === undefined) {
    return options;
  }
  const m = getModel(options.model);
  const defined = Object.fromEntries(
    Object.entries(options).filter(([, value]) => value !== undefined),
  );
  return {
    frames: m.frames,
    height: m.height,
    width: m.width,
    textTokens: m.textTokens,
    textPosition: m.textPosition,
    heads: m.heads,
    headDim: m.headDim,
    pool: m.pool,
    sparsity: m.sparsity,
    ...defined,
  };
}

/** A backend with the device it runs on, and whether the runtime created that device. */
interface Opened {
  backend: Backend;
  device: GPUDevice | undefined;
  owned: boolean;
}

/**
 * The runtime. It survives the loss of a device it created: it opens a new device (or
 * WebAssembly when none can be had), the calls that meet the loss then reject with `DEVICE_LOST`
 * (the caller's GPUBuffers died with the device) and every later call runs on the new backend,
 * each op rebuilding its kernel on first use. A device the caller passed in cannot be replaced:
 * after its loss every call rejects with `DEVICE_LOST`.
 */
class RuntimeImpl implements Runtime {
  #disposed = false;
  readonly #ops = new Set<Op>();
  #current!: Opened;
  /** Bumped on every recovery; ops rebuild kernels of an older generation. */
  #gen = 0;
  /** "lost": the device is gone and a recovery is due; "dead": a caller's device is gone. */
  #state: "ok" | "lost" | "dead" = "ok";
  /** Whether a call has already rejected with the loss of the current device. */
  #reported = false;
  #recovery: Promise<void> | undefined;

  constructor(
    opened: Opened,
    /** How to open a replacement backend after a loss; undefined: not recoverable. */
    readonly reopen: ((why: string) => Promise<Opened>) | undefined,
  ) {
    this.#install(opened);
  }

  #install(opened: Opened): void {
    this.#current = opened;
    this.#state = "ok";
    this.#reported = false;
    const device = opened.device;
    device?.lost.then(() => {
      if (this.#disposed || this.#current.device !== device) return;
      this.#noteLost();
    });
  }

  #noteLost(): void {
    if (this.#state === "ok") this.#state = this.reopen ? "lost" : "dead";
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  get backend(): BackendKind {
    return this.#current.backend.kind;
  }

  get device(): GPUDevice | undefined {
    return this.#current.device;
  }

  describe(): BackendInfo {
    return this.#current.backend.info();
  }

  #check(): void {
    if (this.#disposed) {
      throw new DraftAttentionError("DISPOSED", "runtime", "used after dispose()");
    }
  }

  #lostError(cause?: unknown): DraftAttentionError {
    const detail = cause instanceof DraftAttentionError && cause.code === "DEVICE_LOST"
      ? cause.message.replace(/^Invalid device: /, "")
      : "the GPU device was lost";
    return new DraftAttentionError(
      "DEVICE_LOST",
      "device",
      this.reopen
        ? `${detail}; the next call runs on a new device (or on WebAssembly when none opens)`
        : `${detail}; it was the caller's GPUDevice, which draftattn cannot replace: open a ` +
          `new runtime on a new device`,
      cause === undefined ? undefined : { cause },
    );
  }

  /** Builds the op's kernel now, unless the device is gone (then on its first run). */
  #build(op: Op): Op {
    if (this.#state === "dead") throw this.#lostError();
    if (this.#state === "ok") {
      try {
        op.kernelOn(this.#current.backend, this.#gen);
      } catch (e) {
        if (!(e instanceof DraftAttentionError) || e.code !== "DEVICE_LOST") throw e;
        this.#noteLost();
        if (!this.reopen) throw this.#lostError(e);
      }
    }
    this.#ops.add(op);
    return op;
  }

  /** Whether a lost device is to be replaced before the next call can run. */
  get recovering(): boolean {
    return this.#state === "lost";
  }

  /**
   * The op's kernel when the backend is usable right now (no loss to report or recover from),
   * built if need be; else undefined, and {@linkcode kernelFor} gives it.
   */
  kernelNow(op: Op): KernelOp | DraftKernelOp | undefined {
    return this.#state === "ok" ? op.kernelOn(this.#current.backend, this.#gen) : undefined;
  }

  /**
   * The kernel an op runs on now: reports a loss once (after the recovery, so that `device` is
   * the new one when the caller hears of the loss), waits for a recovery, rebuilds.
   */
  async kernelFor(op: Op): Promise<KernelOp | DraftKernelOp> {
    if (this.#state === "dead") throw this.#lostError();
    if (this.#state === "lost") {
      const recovery = this.#recover();
      if (!this.#reported) {
        this.#reported = true;
        await recovery.catch(() => {});
        throw this.#lostError();
      }
      await recovery;
    }
    return op.kernelOn(this.#current.backend, this.#gen);
  }

  /**
   * The error a failed call rejects with: a raw WebGPU error becomes GPU_ERROR, or DEVICE_LOST
   * when the device turns out lost. A DEVICE_LOST counts as the loss's report and is answered
   * once the recovery has run (the caller's next `device` is the new one).
   */
  async failed(e: unknown, gen: number): Promise<unknown> {
    let error: DraftAttentionError;
    if (e instanceof DraftAttentionError) error = e;
    else if (this.backend !== "webgpu") return e;
    else {
      // A raw WebGPU error (a mapped range of a device destroyed mid-run, say): the device's
      // loss is announced a moment after such failures, so give it that moment.
      const device = this.#current.device;
      let lost = false;
      if (device && gen === this.#gen) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        lost = await Promise.race([
          device.lost.then(() => true),
          new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 50))),
        ]);
        clearTimeout(timer);
      }
      const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      error = new DraftAttentionError(
        lost ? "DEVICE_LOST" : "GPU_ERROR",
        "device",
        lost ? `the GPU device was lost (${message})` : `unexpected WebGPU failure: ${message}`,
        { cause: e },
      );
    }
    // A run whose kernel the recovery disposed (its device was replaced while it was in flight)
    // was cut short by the loss, not by the caller.
    if (
      error.code === "DISPOSED" && !this.#disposed && (gen !== this.#gen || this.#state !== "ok")
    ) {
      return this.#lostError(error);
    }
    if (error.code !== "DEVICE_LOST" || this.#disposed) return error;
    // A run of an earlier device failing late says nothing about the current one.
    if (gen !== this.#gen) return this.#lostError(error);
    if (this.#state === "ok") this.#noteLost();
    if (this.#state === "lost") {
      this.#reported = true;
      await this.#recover().catch(() => {});
    }
    return this.#lostError(error);
  }

  /** Opens the replacement backend once, however many calls wait for it. */
  #recover(): Promise<void> {
    if (!this.#recovery) {
      const recovery = (async () => {
        const old = this.#current;
        let next: Opened;
        try {
          next = await this.reopen!("the previous GPU device was lost");
        } catch (e) {
          const why = e instanceof Error ? e.message : String(e);
          next = {
            backend: createWasmBackend(
              `the GPU device was lost and no new one could be opened (${why})`,
            ),
            device: undefined,
            owned: false,
          };
        }
        if (this.#disposed) {
          next.backend.dispose();
          if (next.owned) next.device?.destroy();
          throw new DraftAttentionError("DISPOSED", "op", "the runtime was disposed");
        }
        old.backend.dispose();
        if (old.owned) old.device?.destroy();
        this.#gen++;
        this.#install(next);
      })();
      this.#recovery = recovery;
      recovery.catch(() => {}).finally(() => {
        if (this.#recovery === recovery) this.#recovery = undefined;
      });
    }
    return this.#recovery;
  }

  forget(op: Op): void {
    this.#ops.delete(op);
  }

  attention(options: AttentionOptions): AttentionOp {
    this.#check();
    const spec = resolveDense(options);
    this.#current.backend.checkSize?.(spec, 0, Math.ceil(spec.tokens / TEXT_TILE));
    return this.#build(new Op(this, spec as DraftSpec, undefined));
  }

  draftAttention(options: DraftAttentionOptions): DraftAttentionOp {
    this.#check();
    const spec: DraftSpec = resolveDraft(withModel(options));
    // Sizes first: planning a geometry that cannot run here would take seconds and gigabytes
    // (2^27 tokens: 7 s and 2.1 GB) before the backend said TOO_LARGE.
    const g = spec.frames * Math.ceil(spec.height / spec.poolH) *
      Math.ceil(spec.width / spec.poolW);
    const tiles = g + Math.ceil(spec.textTokens / TEXT_TILE);
    this.#current.backend.checkSize?.(spec, g, tiles);
    return this.#build(new Op(this, spec, buildPlan(spec)));
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const op of [...this.#ops]) op.dispose();
    this.#ops.clear();
    this.#current.backend.dispose();
    if (this.#current.owned) this.#current.device?.destroy();
  }
}

async function requestDevice(
  adapter: GPUAdapter,
  limits: "adapter" | "default",
): Promise<{ device: GPUDevice; features: string[] }> {
  const requiredLimits: Record<string, number> = {};
  if (limits === "adapter") {
    for (const name of WANTED_LIMITS) {
      const value = (adapter.limits as unknown as Record<string, number>)[name];
      if (typeof value === "number") requiredLimits[name] = value;
    }
  }
  const features: string[] = [];
  for (const f of WANTED_FEATURES) {
    // `subgroups` is requestable in Deno although `adapter.features` does not list it.
    if (adapter.features.has(f as GPUFeatureName) || f === "subgroups") features.push(f);
  }
  // Try with every wanted feature; drop the unlisted ones if the device refuses them.
  for (
    const attempt of [
      features,
      features.filter((f) => adapter.features.has(f as GPUFeatureName)),
    ]
  ) {
    try {
      const device = await adapter.requestDevice({
        requiredFeatures: attempt as GPUFeatureName[],
        requiredLimits,
      });
      return { device, features: attempt };
    } catch {
      // fall through to the next attempt
    }
  }
  throw new DraftAttentionError(
    "NO_BACKEND",
    "backend",
    `the WebGPU adapter refused a device with features ${describeValue(features)}`,
  );
}

/**
 * Opens the backend `want` asks for: WebAssembly, or a new WebGPU device of its own (`owned`).
 * `note` is appended to the reason (a reopening after a device loss says so).
 */
async function openBackend(
  want: "auto" | BackendKind,
  limits: "adapter" | "default",
  note = "",
  threads?: number,
): Promise<Opened> {
  const wasm = (reason: string): Opened => ({
    backend: createWasmBackend(reason + note, { threads }),
    device: undefined,
    owned: false,
  });
  if (want === "wasm") return wasm('backend "wasm" was requested');
  const adapter = await globalThis.navigator?.gpu?.requestAdapter({
    powerPreference: "high-performance",
  });
  if (!adapter) {
    if (want === "webgpu") {
      throw new DraftAttentionError(
        "NO_BACKEND",
        "backend",
        `"webgpu" was requested but no WebGPU adapter was found`,
      );
    }
    return wasm("no WebGPU adapter was found");
  }
  const info = adapter.info;
  const fallback = (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  const name = info.description || info.vendor || "unknown adapter";
  if (want === "auto" && fallback) {
    return wasm(
      `the only WebGPU adapter (${name}) is a software fallback; WebAssembly SIMD is faster there`,
    );
  }
  const { device, features } = await requestDevice(adapter, limits);
  const reason = want === "webgpu"
    ? `backend "webgpu" was requested${fallback ? " (software adapter)" : ""}`
    : `hardware WebGPU adapter found`;
  return {
    backend: createWebGpuBackend({ device, adapterInfo: info, reason: reason + note, features }),
    device,
    owned: true,
  };
}

/**
 * Opens a runtime on the best backend available, or on the one asked for.
 *
 * A runtime that opened its own GPU device survives the device's loss: the calls that meet the
 * loss reject with `DEVICE_LOST` once the runtime has moved to a new device (or to WebAssembly
 * when no device opens; `runtime.device` and `runtime.backend` tell which), and later calls run
 * there, every op rebuilding itself on first use. GPUBuffers of the lost device are gone: make
 * new ones on `runtime.device`. A `device` passed in by the caller cannot be replaced: after its
 * loss every call rejects with `DEVICE_LOST`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openRuntime } from "../mod.ts";
 * const rt = await openRuntime({ backend: "wasm" });
 * const op = rt.attention({ tokens: 65, heads: 2, headDim: 32 });
 * const q = new Float32Array(65 * 2 * 32).fill(0.1);
 * const out = await op.run(q, q, q);
 * assert.equal(out.length, q.length);
 * rt.dispose();
 * ```
 */
export async function openRuntime(options: RuntimeOptions = {}): Promise<Runtime> {
  if (typeof options !== "object" || options === null) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "options",
      `must be an object, got ${describeValue(options)}`,
    );
  }
  checkKeys("openRuntime", options);
  const want = options.backend ?? (options.device ? "webgpu" : "auto");
  if (!["auto", "webgpu", "wasm"].includes(want as string)) {
    throw new DraftAttentionError(
      typeof want === "string" ? "UNSUPPORTED" : "INVALID_OPTION",
      "backend",
      `must be "auto", "webgpu" or "wasm", got ${describeValue(want)}`,
    );
  }
  const limits = options.limits ?? "adapter";
  if (limits !== "adapter" && limits !== "default") {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "limits",
      `must be "adapter" or "default", got ${describeValue(limits)}`,
    );
  }
  const threads = options.threads;
  if (threads !== undefined) positiveInt("threads", threads, 1, 1024);
  if (options.device !== undefined) {
    if (want === "wasm") {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        "device",
        `a GPUDevice was given with backend "wasm"`,
      );
    }
    if (typeof GPUDevice === "undefined" || !(options.device instanceof GPUDevice)) {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        "device",
        `must be a GPUDevice, got ${describeValue(options.device)}`,
      );
    }
    const device = options.device;
    const features = [...device.features].filter((f) =>
      (WANTED_FEATURES as readonly string[]).includes(f)
    );
    return new RuntimeImpl({
      backend: createWebGpuBackend({ device, reason: "the caller's GPUDevice", features }),
      device,
      owned: false,
    }, undefined);
  }
  const opened = await openBackend(want as "auto" | BackendKind, limits, "", threads);
  return new RuntimeImpl(
    opened,
    opened.owned
      ? (why) => openBackend(want as "auto" | BackendKind, limits, `; reopened: ${why}`, threads)
      : undefined,
  );
}
