/**
 * The public entry point: `openRuntime()` picks a backend (WebGPU or WebAssembly) and returns a
 * `Runtime` that builds attention ops. Inputs are validated here, once, for both backends.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import { getModel } from "./models.ts";
import { buildPlan } from "./plan.ts";
import { resolveDense, resolveDraft, tensorElements } from "./validate.ts";
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
  /** Computes attention on typed arrays; resolves to a new array of the same type and layout. */
  run(q: TensorArray, k: TensorArray, v: TensorArray): Promise<TensorArray>;
  /** WebGPU only: reads caller-owned buffers and writes `out`, with no readback. */
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

function checkArray(field: string, x: unknown, spec: DenseSpec): void {
  const want = spec.dtype === "f16" ? Float16Array : Float32Array;
  if (!(x instanceof want)) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `must be a ${want.name} for dtype "${spec.dtype}", got ${describeValue(x)}`,
    );
  }
  const n = tensorElements(spec);
  if (x.length !== n) {
    const shape = spec.layout === "BSHD"
      ? `[${spec.batch}, ${spec.tokens}, ${spec.heads}, ${spec.headDim}]`
      : `[${spec.batch}, ${spec.heads}, ${spec.tokens}, ${spec.headDim}]`;
    throw new DraftAttentionError(
      "INVALID_INPUT",
      field,
      `must hold ${n} elements (${spec.layout} ${shape}), got ${x.length}`,
    );
  }
}

class Op implements DraftAttentionOp {
  #disposed = false;
  readonly g: number;

  constructor(
    readonly kind: BackendKind,
    readonly spec: DraftSpec,
    readonly kernel: KernelOp | DraftKernelOp,
    g: number,
    readonly alive: () => boolean,
  ) {
    this.g = g;
  }

  #check(): void {
    if (this.#disposed || !this.alive()) {
      throw new DraftAttentionError("DISPOSED", "op", "used after dispose()");
    }
  }

  run(q: TensorArray, k: TensorArray, v: TensorArray): Promise<TensorArray>;
  run(buffers: GpuRunArgs): Promise<void>;
  run(
    a: TensorArray | GpuRunArgs,
    k?: TensorArray,
    v?: TensorArray,
  ): Promise<TensorArray | void> {
    try {
      this.#check();
      if (!ArrayBuffer.isView(a) && typeof a === "object" && a !== null && k === undefined) {
        const args = a as GpuRunArgs;
        if (!this.kernel.runBuffers) {
          throw new DraftAttentionError(
            "UNSUPPORTED",
            "q",
            `GPUBuffer inputs need the webgpu backend; this runtime uses ${this.kind}`,
          );
        }
        for (const f of ["q", "k", "v", "out"] as const) {
          if (!isGpuBuffer(args[f])) {
            throw new DraftAttentionError(
              "INVALID_INPUT",
              f,
              `must be a GPUBuffer, got ${describeValue(args[f])}`,
            );
          }
        }
        return this.kernel.runBuffers(args);
      }
      checkArray("q", a, this.spec);
      checkArray("k", k, this.spec);
      checkArray("v", v, this.spec);
      return this.kernel.run(a as TensorArray, k!, v!);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  lastMask(): Promise<MaskResult> {
    try {
      this.#check();
      if (!("lastMask" in this.kernel)) {
        throw new DraftAttentionError("UNSUPPORTED", "op", "dense attention has no mask");
      }
      return this.kernel.lastMask();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.kernel.dispose();
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

class RuntimeImpl implements Runtime {
  #disposed = false;
  readonly #ops = new Set<Op>();

  constructor(
    readonly impl: Backend,
    readonly device: GPUDevice | undefined,
    readonly ownedDevice: GPUDevice | undefined,
  ) {}

  get backend(): BackendKind {
    return this.impl.kind;
  }

  describe(): BackendInfo {
    return this.impl.info();
  }

  #check(): void {
    if (this.#disposed) {
      throw new DraftAttentionError("DISPOSED", "runtime", "used after dispose()");
    }
  }

  #track(op: Op): Op {
    this.#ops.add(op);
    return op;
  }

  attention(options: AttentionOptions): AttentionOp {
    this.#check();
    const spec = resolveDense(options);
    return this.#track(
      new Op(
        this.impl.kind,
        spec as DraftSpec,
        this.impl.dense(spec),
        0,
        () => !this.#disposed,
      ),
    );
  }

  draftAttention(options: DraftAttentionOptions): DraftAttentionOp {
    this.#check();
    const spec: DraftSpec = resolveDraft(withModel(options));
    const plan = buildPlan(spec);
    return this.#track(
      new Op(this.impl.kind, spec, this.impl.draft(spec, plan), plan.g, () => !this.#disposed),
    );
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const op of this.#ops) op.dispose();
    this.#ops.clear();
    this.impl.dispose();
    this.ownedDevice?.destroy();
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
 * Opens a runtime on the best backend available, or on the one asked for.
 *
 * @example
 * ```ts
 * import { openRuntime } from "../mod.ts";
 * const rt = await openRuntime({ backend: "wasm" });
 * const op = rt.attention({ tokens: 65, heads: 2, headDim: 32 });
 * const q = new Float32Array(65 * 2 * 32).fill(0.1);
 * const out = await op.run(q, q, q);
 * console.assert(out.length === q.length);
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
    return new RuntimeImpl(
      createWebGpuBackend({ device, reason: "the caller's GPUDevice", features }),
      device,
      undefined,
    );
  }
  if (want === "wasm") {
    return new RuntimeImpl(createWasmBackend('backend "wasm" was requested'), undefined, undefined);
  }
  const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    if (want === "webgpu") {
      throw new DraftAttentionError(
        "NO_BACKEND",
        "backend",
        `"webgpu" was requested but no WebGPU adapter was found`,
      );
    }
    return new RuntimeImpl(createWasmBackend("no WebGPU adapter was found"), undefined, undefined);
  }
  const info = adapter.info;
  const fallback = (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  const name = info.description || info.vendor || "unknown adapter";
  if (want === "auto" && fallback) {
    return new RuntimeImpl(
      createWasmBackend(
        `the only WebGPU adapter (${name}) is a software fallback; WebAssembly SIMD is faster there`,
      ),
      undefined,
      undefined,
    );
  }
  const { device, features } = await requestDevice(adapter, limits);
  const reason = want === "webgpu"
    ? `backend "webgpu" was requested${fallback ? " (software adapter)" : ""}`
    : `hardware WebGPU adapter found`;
  return new RuntimeImpl(
    createWebGpuBackend({ device, adapterInfo: info, reason, features }),
    device,
    device,
  );
}
