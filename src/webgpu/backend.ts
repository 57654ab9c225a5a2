/**
 * The WebGPU backend: WGSL kernels for pooling, the draft map, radix selection with block-list
 * compaction and block-sparse flash attention, all on the GPU (no CPU round trip inside a run).
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import type {
  Backend,
  BackendInfo,
  DenseSpec,
  DraftKernelOp,
  DraftSpec,
  KernelOp,
  Plan,
} from "../types.ts";
import { GpuContext } from "./context.ts";
import { WebGpuOp } from "./op.ts";
import { splitPieces } from "./pieces.ts";

/** Options of {@linkcode createWebGpuBackend}. */
export interface WebGpuBackendOptions {
  /** The device to run on; its limits and features pick the kernel variants. */
  device: GPUDevice;
  /** Adapter description for `info()`. */
  adapterInfo?: GPUAdapterInfo;
  /** Why this backend was chosen. */
  reason: string;
  /** Features enabled on the device that draftattn uses. */
  features: string[];
}

class WebGpuBackend implements Backend {
  readonly kind = "webgpu" as const;
  readonly #ctx: GpuContext;
  readonly #ops = new Set<WebGpuOp>();
  readonly #info: BackendInfo;
  #disposed = false;

  constructor(opts: WebGpuBackendOptions) {
    this.#ctx = new GpuContext(opts.device);
    const a = opts.adapterInfo;
    const adapter = a?.description ||
      [a?.vendor, a?.architecture, a?.device].filter((x) => x).join(" ") ||
      "WebGPU adapter";
    this.#info = {
      backend: "webgpu",
      adapter,
      reason: opts.reason,
      features: [...opts.features],
      limits: { ...this.#ctx.limits },
    };
  }

  info(): BackendInfo {
    return {
      ...this.#info,
      features: [...this.#info.features],
      limits: { ...this.#info.limits },
    };
  }

  #check(): void {
    if (this.#disposed) {
      throw new DraftAttentionError("DISPOSED", "backend", "the backend was disposed");
    }
    this.#ctx.assertAlive();
  }

  #track(op: WebGpuOp): WebGpuOp {
    this.#ops.add(op);
    return op;
  }

  /**
   * The binding checks of `WebGpuOp`'s constructor (src/webgpu/op.ts), made from the sizes
   * before the runtime plans: one head of q and one pair's draft map and block lists must fit
   * a binding (a BSHD batch element that does not fit goes per head).
   */
  checkSize(spec: DenseSpec, g: number, tiles: number): void {
    const lim = this.#ctx.limits;
    const limits = {
      maxBytes: Math.min(lim.maxStorageBufferBindingSize, lim.maxBufferSize) -
        lim.minStorageBufferOffsetAlignment,
      perPairBytes: g > 0 ? Math.max(g * spec.headDim * 4, g * g * 4, tiles * tiles * 4) : 0,
    };
    try {
      splitPieces(spec, limits);
    } catch (e) {
      if (!(spec.layout === "BSHD" && e instanceof DraftAttentionError && e.field === "q")) throw e;
      splitPieces({ ...spec, layout: "BHSD" }, limits);
    }
  }

  dense(spec: DenseSpec): KernelOp {
    this.#check();
    return this.#track(new WebGpuOp(this.#ctx, spec, undefined, (op) => this.#ops.delete(op)));
  }

  draft(spec: DraftSpec, plan: Plan): DraftKernelOp {
    this.#check();
    return this.#track(new WebGpuOp(this.#ctx, spec, plan, (op) => this.#ops.delete(op)));
  }

  /** Disposes every op; the device belongs to the caller (the runtime destroys its own). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const op of [...this.#ops]) op.dispose();
    this.#ops.clear();
  }
}

/**
 * Creates the WebGPU backend on a device.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createWebGpuBackend } from "./backend.ts";
 * const adapter = await navigator.gpu.requestAdapter();
 * // Where there is no adapter the conformance suite fails instead (CI has llvmpipe).
 * if (adapter) {
 *   const device = await adapter.requestDevice();
 *   const backend = createWebGpuBackend({ device, reason: "example", features: [] });
 *   assert.equal(backend.info().backend, "webgpu");
 *   backend.dispose();
 *   device.destroy();
 * }
 * ```
 */
export function createWebGpuBackend(opts: WebGpuBackendOptions): Backend {
  return new WebGpuBackend(opts);
}
