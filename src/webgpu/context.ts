/**
 * The WebGPU context of a backend: device, the limits that plan the kernels, the pipeline
 * cache, error scopes and device-loss tracking. Everything GPU-side goes through here so that
 * every failure surfaces as a `DraftAttentionError`.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import { Kernel, type KernelSpec } from "./kernel.ts";

/** The device limits the kernels are planned with. */
export interface GpuLimits {
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupsPerDimension: number;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  minStorageBufferOffsetAlignment: number;
  maxStorageBuffersPerShaderStage: number;
}

/** Device, limits and pipeline cache shared by every op of a backend. */
export class GpuContext {
  readonly device: GPUDevice;
  readonly limits: GpuLimits;
  #lost: GPUDeviceLostInfo | undefined;
  readonly #kernels = new Map<string, Kernel>();

  /**
   * @param limits Overrides of the device limits, only ever lower (tests use them to force
   *   pieces and small variants on a large device).
   */
  constructor(device: GPUDevice, limits: Partial<GpuLimits> = {}) {
    this.device = device;
    const l = device.limits;
    const dev: GpuLimits = {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    };
    for (const [k, v] of Object.entries(limits) as [keyof GpuLimits, number][]) {
      dev[k] = k === "minStorageBufferOffsetAlignment" ? Math.max(dev[k], v) : Math.min(dev[k], v);
    }
    this.limits = dev;
    device.lost.then((info) => {
      this.#lost = info;
    });
  }

  /**
   * The subgroup size of the device's kernels where `subgroups` is enabled and the adapter
   * reports a single size (`device.adapterInfo`), else 0.
   */
  get subgroupSize(): number {
    if (!this.device.features.has("subgroups" as GPUFeatureName)) return 0;
    const info =
      (this.device as { adapterInfo?: { subgroupMinSize?: number; subgroupMaxSize?: number } })
        .adapterInfo;
    const min = info?.subgroupMinSize ?? 0;
    return min > 0 && min === info?.subgroupMaxSize ? min : 0;
  }

  /** Whether the device was lost (or destroyed). */
  get lost(): boolean {
    return this.#lost !== undefined;
  }

  /** Throws `DEVICE_LOST` when the device is gone. */
  assertAlive(): void {
    if (this.#lost) throw this.lostError();
  }

  /** The `DEVICE_LOST` error describing the loss. */
  lostError(cause?: unknown): DraftAttentionError {
    const info = this.#lost;
    const why = info ? `${info.reason ?? "unknown"}${info.message ? `: ${info.message}` : ""}` : "";
    return new DraftAttentionError(
      "DEVICE_LOST",
      "device",
      `the GPU device was lost${why ? ` (${why})` : ""}`,
      cause === undefined ? undefined : { cause },
    );
  }

  /** The compiled kernel for `spec.key`, built on first use. */
  kernel(spec: KernelSpec): Kernel {
    let k = this.#kernels.get(spec.key);
    if (!k) {
      k = new Kernel(this, spec);
      this.#kernels.set(spec.key, k);
    }
    return k;
  }

  /** A buffer of at least `size` bytes (rounded up to 4), optionally filled with `data`. */
  buffer(
    label: string,
    size: number,
    usage: GPUBufferUsageFlags,
    data?: ArrayBufferView,
  ): GPUBuffer {
    const bytes = Math.max(4, Math.ceil(size / 4) * 4);
    if (bytes > this.limits.maxBufferSize) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        label,
        `needs a ${bytes}-byte GPU buffer; the device allows ${this.limits.maxBufferSize}`,
      );
    }
    if (!data) return this.device.createBuffer({ label, size: bytes, usage });
    const buf = this.device.createBuffer({ label, size: bytes, usage, mappedAtCreation: true });
    new Uint8Array(buf.getMappedRange()).set(
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    );
    buf.unmap();
    return buf;
  }

  /**
   * Runs `fn` inside validation, out-of-memory and internal error scopes. Returns its value and
   * a promise that rejects with `GPU_ERROR` (or `DEVICE_LOST`) when any scope caught an error.
   * The scopes are pushed and popped synchronously, so interleaved async callers cannot mix
   * them up.
   */
  scoped<T>(what: string, fn: () => T): [T, Promise<void>] {
    const d = this.device;
    d.pushErrorScope("internal");
    d.pushErrorScope("out-of-memory");
    d.pushErrorScope("validation");
    let value: T | undefined;
    let thrown: { e: unknown } | undefined;
    try {
      value = fn();
    } catch (e) {
      thrown = { e };
    }
    // Always balanced, also when fn threw.
    const pops = [d.popErrorScope(), d.popErrorScope(), d.popErrorScope()];
    if (thrown) {
      Promise.all(pops).catch(() => {});
      throw thrown.e;
    }
    const done = Promise.all(pops).then(
      async (errors) => {
        const e = errors.find((x) => x !== null);
        if (e) throw await this.failure(what, e);
      },
      async (e) => {
        throw await this.failure(what, e);
      },
    );
    return [value as T, done];
  }

  /**
   * The error to report for a failure: waits briefly for `device.lost` to settle first (a
   * destroyed device makes pending work fail before its loss is announced), then
   * `DEVICE_LOST` or `GPU_ERROR`. Only failure paths pay the wait.
   */
  async failure(what: string, e: unknown): Promise<DraftAttentionError> {
    if (!this.lost) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.device.lost,
        new Promise((resolve) => (timer = setTimeout(resolve, 20))),
      ]);
      clearTimeout(timer);
      await Promise.resolve(); // let the `lost` handler of the constructor run
    }
    return this.gpuError(what, e);
  }

  /**
   * Maps a WebGPU error (or a failed promise) to `GPU_ERROR`, `TOO_LARGE` for out-of-memory, or
   * `DEVICE_LOST` after a loss.
   */
  gpuError(what: string, e: unknown): DraftAttentionError {
    if (e instanceof DraftAttentionError) return e;
    if (this.lost) return this.lostError(e);
    if (typeof GPUOutOfMemoryError !== "undefined" && e instanceof GPUOutOfMemoryError) {
      // The sizes fit every limit (those are checked before allocating), but not the memory
      // the device has left: the request is too large for it now.
      return new DraftAttentionError(
        "TOO_LARGE",
        "device",
        `the GPU ran out of memory in ${what} (${e.message}); free other GPU memory or use ` +
          `a smaller batch, fewer tokens or heads`,
        { cause: e },
      );
    }
    const kind = typeof GPUOutOfMemoryError !== "undefined" && e instanceof GPUOutOfMemoryError
      ? "out of memory"
      : typeof GPUValidationError !== "undefined" && e instanceof GPUValidationError
      ? "validation error"
      : "error";
    const message = e instanceof Error || (e && typeof e === "object" && "message" in e)
      ? String((e as { message: unknown }).message)
      : String(e);
    return new DraftAttentionError("GPU_ERROR", "device", `WebGPU ${kind} in ${what}: ${message}`, {
      cause: e,
    });
  }
}
