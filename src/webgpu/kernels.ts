/**
 * The kernels of the WebGPU backend: for each wgsl/ file, its bindings (in `@binding` order),
 * the host mirror of its `struct Params`, its specialisation and pipeline-cache key.
 *
 * @module
 */
import type { DType } from "../types.ts";
import type { GpuContext } from "./context.ts";
import type { Kernel, ParamLayout } from "./kernel.ts";
import { specialize } from "./specialize.ts";
import { type FlashConfig, flashKey } from "./variants.ts";

/** Mirror of `Params` in wgsl/flash_io.wgsl (every flash kernel). */
export const FLASH_PARAMS: ParamLayout = [
  ["items", "u32"],
  ["nbh", "u32"],
  ["heads_per_row", "u32"],
  ["tokens", "u32"],
  ["s_b", "u32"],
  ["s_t", "u32"],
  ["s_h", "u32"],
  ["base_q", "u32"],
  ["base_k", "u32"],
  ["base_v", "u32"],
  ["base_o", "u32"],
  ["tiles", "u32"],
  ["dense", "u32"],
  ["scale_log2", "f32"],
  ["tiles_at", "u32"],
  ["items_at", "u32"],
  ["lead", "u32"],
];

/**
 * The specialised WGSL of a flash variant (its `file`, see src/webgpu/variants.ts); `dense`: the
 * pipeline serves dense ops only (dense mode compiled in, see DENSE in wgsl/flash_io.wgsl).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { flashSource } from "./kernels.ts";
 * import { pickFlashVariant } from "./variants.ts";
 * const limits = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256 };
 * const code = flashSource(pickFlashVariant(128, limits), "f32", true);
 * assert.ok(code.includes("const DENSE: u32 = 1u;"));
 * ```
 */
export function flashSource(c: FlashConfig, dtype: DType, dense = false): string {
  return specialize(c.file, {
    storage: dtype,
    // Dense pipelines read K and V through the identity order: no token registers.
    consts: {
      ...c.consts,
      DENSE: dense ? 1 : 0,
      ...(dense && c.consts.V_TOKENS_FROM_K ? { V_TOKENS_FROM_K: 0 } : {}),
    },
  });
}

/** Flash attention (dense or block-sparse) for one head dim, dtype and tile variant. */
export function flashKernel(ctx: GpuContext, c: FlashConfig, dtype: DType, dense = false): Kernel {
  return ctx.kernel({
    key: `${flashKey(c, dtype)}:DENSE${dense ? 1 : 0}`,
    code: flashSource(c, dtype, dense),
    bindings: [
      ["params", "uniform"],
      ["q", "read"],
      ["k", "read"],
      ["v", "read"],
      ["out", "storage"],
      ["table", "read"],
      ["counts", "read"],
      ["lists", "read"],
    ],
    constants: c.overrides,
  });
}

/** Mirror of `Params` in wgsl/pool.wgsl. */
export const POOL_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["heads_per_row", "u32"],
  ["g", "u32"],
  ["s_b", "u32"],
  ["s_t", "u32"],
  ["s_h", "u32"],
  ["base", "u32"],
  ["pair0", "u32"],
];

/** Invocations per workgroup of the pool kernel. */
export const POOL_WG = 64;

/** Window means of q or k. */
export function poolKernel(ctx: GpuContext, headDim: number, dtype: DType): Kernel {
  return ctx.kernel({
    key: `pool:d${headDim}:${dtype}`,
    code: specialize("pool", { storage: dtype }),
    bindings: [
      ["params", "uniform"],
      ["x", "read"],
      ["order", "read"],
      ["tiles", "read"],
      ["inv_len", "read"],
      ["pooled", "storage"],
    ],
    constants: { D: headDim, WG: POOL_WG },
  });
}

/** Mirror of `Params` in wgsl/draft_map.wgsl. */
export const MAP_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["g", "u32"],
  ["row_blocks", "u32"],
  ["scale", "f32"],
];

/** Rows per workgroup of the draft-map kernel (`const R` in the WGSL). */
export const MAP_ROWS = 8;

/** The draft map P = softmax(Qd Kd^T * scale). */
export function mapKernel(ctx: GpuContext, headDim: number): Kernel {
  return ctx.kernel({
    key: `draft_map:d${headDim}`,
    code: specialize("draft_map"),
    bindings: [
      ["params", "uniform"],
      ["qd", "read"],
      ["kd", "read"],
      ["p", "storage"],
    ],
    constants: { D: headDim, WG: 128 },
  });
}

/** Mirror of `Params` in wgsl/select_histogram.wgsl. */
export const HIST_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["n", "u32"],
  ["chunks", "u32"],
  ["shift", "u32"],
];

/** Entries of P per histogram workgroup. */
export const HIST_CHUNK = 4096;

/** Radix-select histogram pass. */
export function histKernel(ctx: GpuContext): Kernel {
  return ctx.kernel({
    key: "select_histogram",
    code: specialize("select_histogram"),
    bindings: [
      ["params", "uniform"],
      ["p", "read"],
      ["state", "read"],
      ["hist", "storage"],
    ],
    constants: { CHUNK: HIST_CHUNK },
  });
}

/** Mirror of `Params` in wgsl/select_pick.wgsl. */
export const PICK_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["shift", "u32"],
  ["keep", "u32"],
];

/** Radix-select digit pick. */
export function pickKernel(ctx: GpuContext): Kernel {
  return ctx.kernel({
    key: "select_pick",
    code: specialize("select_pick"),
    bindings: [
      ["params", "uniform"],
      ["hist", "storage"],
      ["state", "storage"],
    ],
  });
}

/** Mirror of `Params` in wgsl/select_lists.wgsl. */
export const LISTS_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["g", "u32"],
  ["tiles", "u32"],
  ["pair0", "u32"],
];

/** Block lists of the video query tiles. */
export function listsKernel(ctx: GpuContext): Kernel {
  return ctx.kernel({
    key: "select_lists",
    code: specialize("select_lists"),
    bindings: [
      ["params", "uniform"],
      ["p", "read"],
      ["state", "read"],
      ["counts", "storage"],
      ["lists", "storage"],
    ],
  });
}
