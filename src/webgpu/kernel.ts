/**
 * A compiled compute kernel: pipeline plus explicit bind-group layout, bindings named after the
 * WGSL variables, and the params-struct packing that mirrors each kernel's `struct Params`.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import type { GpuContext } from "./context.ts";

/** How a binding is declared in WGSL: `uniform`, `storage, read` or `storage, read_write`. */
export type BindingKind = "uniform" | "read" | "storage";

/** Everything that identifies and builds a kernel. */
export interface KernelSpec {
  /** Pipeline-cache key: kernel name plus every specialisation (head dim, dtype, tiles). */
  key: string;
  code: string;
  /** `[name, kind]` in `@binding` order. */
  bindings: readonly (readonly [string, BindingKind])[];
  /** Values of `override` constants. */
  constants?: Record<string, number>;
}

const KINDS: Record<BindingKind, GPUBufferBindingType> = {
  uniform: "uniform",
  read: "read-only-storage",
  storage: "storage",
};

/** Pipeline, layout and binding names of one specialised kernel. */
export class Kernel {
  readonly key: string;
  readonly layout: GPUBindGroupLayout;
  readonly pipeline: GPUComputePipeline;
  readonly names: readonly string[];
  readonly #ctx: GpuContext;

  constructor(ctx: GpuContext, spec: KernelSpec) {
    this.#ctx = ctx;
    this.key = spec.key;
    this.names = spec.bindings.map(([name]) => name);
    const device = ctx.device;
    this.layout = device.createBindGroupLayout({
      label: spec.key,
      entries: spec.bindings.map(([, kind], binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: KINDS[kind] },
      })),
    });
    const module = device.createShaderModule({ label: spec.key, code: spec.code });
    this.pipeline = device.createComputePipeline({
      label: spec.key,
      layout: device.createPipelineLayout({ label: spec.key, bindGroupLayouts: [this.layout] }),
      compute: { module, entryPoint: "main", constants: spec.constants },
    });
  }

  /** A bind group; `resources` names every binding of the kernel, nothing else. */
  bind(resources: Record<string, GPUBuffer | GPUBufferBinding>): GPUBindGroup {
    const extra = Object.keys(resources).filter((n) => !this.names.includes(n));
    if (extra.length) throw new Error(`${this.key}: unknown bindings ${extra.join(", ")}`);
    return this.#ctx.device.createBindGroup({
      label: this.key,
      layout: this.layout,
      entries: this.names.map((name, binding) => {
        const r = resources[name];
        if (!r) throw new Error(`${this.key}: binding ${name} missing`);
        return { binding, resource: r instanceof GPUBuffer ? { buffer: r } : r };
      }),
    });
  }

  /**
   * Dispatches `workgroups` workgroups as a 2-D grid (x at most maxComputeWorkgroupsPerDimension);
   * the kernel linearises `wid.x + wid.y * nwg.x` and ignores ids past its total.
   */
  dispatch(pass: GPUComputePassEncoder, group: GPUBindGroup, workgroups: number): void {
    if (workgroups <= 0) return;
    const max = this.#ctx.limits.maxComputeWorkgroupsPerDimension;
    const x = Math.min(workgroups, max);
    const y = Math.ceil(workgroups / x);
    if (y > max) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "tokens",
        `${this.key} needs ${workgroups} workgroups; the device dispatches at most ${max * max}`,
      );
    }
    pass.setPipeline(this.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y);
  }
}

/** Field types of a params struct (every field 4 bytes). */
export type ParamType = "u32" | "f32";

/** `[name, type]` in WGSL declaration order: the host mirror of a `struct Params`. */
export type ParamLayout = readonly (readonly [string, ParamType])[];

/** Bytes of a params struct: 4 per field, rounded up to 16 like a WGSL uniform struct. */
export function paramsBytes(layout: ParamLayout): number {
  return Math.ceil((layout.length * 4) / 16) * 16;
}

/**
 * Packs `values` per `layout` into a uniform-buffer image (size rounded up to 16 bytes).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { packParams } from "./kernel.ts";
 * const bytes = packParams([["n", "u32"], ["scale", "f32"]], { n: 3, scale: 0.5 });
 * assert.ok(bytes.byteLength === 16 && new Uint32Array(bytes)[0] === 3);
 * ```
 */
export function packParams(
  layout: ParamLayout,
  values: Record<string, number>,
): ArrayBuffer {
  const buf = new ArrayBuffer(paramsBytes(layout));
  const view = new DataView(buf);
  layout.forEach(([name, type], i) => {
    const v = values[name];
    if (typeof v !== "number") throw new Error(`params: ${name} missing`);
    if (type === "f32") {
      view.setFloat32(i * 4, v, true);
    } else {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new DraftAttentionError(
          "TOO_LARGE",
          "tokens",
          `kernel parameter ${name} = ${v} does not fit in 32 bits`,
        );
      }
      view.setUint32(i * 4, v, true);
    }
  });
  return buf;
}
