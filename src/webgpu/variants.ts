/**
 * The tile table of the flash-attention kernel (wgsl/flash_attention.wgsl): one list of
 * variants, picked per head dim and device limits. The pipeline-cache key is the same tuple.
 *
 * Thread (rg, cg) of an RG x CG workgroup owns a 4 x 4 score tile and a 4-row x TD4-vec4 output
 * tile, so a variant covers BR = 4*RG query rows, BC = 4*CG keys per chunk and head dims up to
 * DP = 4*CG*TD4. Workgroup memory (bytes), mirrored from the WGSL declarations:
 *   16 * (BR*KSTR4 + max(BC*KSTR4, VK*DP/4))   stage: Q chunk, then K chunk or V sub-chunk
 * + 4 * BR*BC + 4 * BR*CG + 4 * (BR + BC)      P tile, row partials, row/key offsets
 * with KSTR4 = DK/4 + 1. Worked example, DP 128 at 32 KiB: 64 x 32 tile, DK 32, VK 16:
 * 16 * (576 + 512) + 8192 + 2048 + 384 = 28032 bytes.
 *
 * Ordered per DP from the largest tile down; the first one that fits the device's
 * maxComputeWorkgroupStorageSize and maxComputeInvocationsPerWorkgroup wins. The smallest of
 * each DP fits WebGPU's default 16 KiB / 256 invocations.
 *
 * @module
 */

/** One row of the table. */
export interface FlashVariant {
  /** Row groups (BR = 4*rg query rows per work item). */
  rg: number;
  /** Column groups (BC = 4*cg keys per chunk). */
  cg: number;
  /** Output vec4 per row per thread (DP = 4*cg*td4 head dims). */
  td4: number;
  /** Head dims per staged Q/K chunk (clamped to the head dim; Q stays resident when it fits). */
  dk: number;
  /** Keys per staged V sub-chunk (divides BC). */
  vk: number;
}

/** The table: DP -> variants, largest tile first. */
export const FLASH_VARIANTS: Readonly<Record<number, readonly FlashVariant[]>> = {
  32: [
    { rg: 16, cg: 8, td4: 1, dk: 32, vk: 32 }, // 64 x 32, 128 threads, 23.9 KiB
    { rg: 8, cg: 8, td4: 1, dk: 32, vk: 32 }, // 32 x 32, 64 threads, 14.3 KiB
  ],
  64: [
    { rg: 16, cg: 16, td4: 1, dk: 32, vk: 32 }, // 64 x 64, 256 threads, 38.5 KiB
    { rg: 16, cg: 8, td4: 2, dk: 32, vk: 32 }, // 64 x 32, 128 threads, 27.4 KiB
    { rg: 8, cg: 8, td4: 2, dk: 32, vk: 16 }, // 32 x 32, 64 threads, 14.3 KiB
  ],
  128: [
    { rg: 16, cg: 16, td4: 2, dk: 32, vk: 32 }, // 64 x 64, 256 threads, 45.5 KiB
    { rg: 16, cg: 8, td4: 4, dk: 32, vk: 16 }, // 64 x 32, 128 threads, 27.4 KiB
    { rg: 8, cg: 8, td4: 4, dk: 16, vk: 16 }, // 32 x 32, 64 threads, 15.8 KiB
  ],
  256: [
    { rg: 16, cg: 16, td4: 4, dk: 32, vk: 16 }, // 64 x 64, 256 threads, 45.5 KiB
    { rg: 16, cg: 8, td4: 8, dk: 32, vk: 8 }, // 64 x 32, 128 threads, 27.4 KiB
    { rg: 8, cg: 8, td4: 8, dk: 16, vk: 8 }, // 32 x 32, 64 threads, 15.8 KiB
  ],
};

/** A variant resolved for one head dim: everything the kernel's overrides and key need. */
export interface FlashConfig extends FlashVariant {
  headDim: number;
  /** Q/K chunk actually used: min(dk, headDim). */
  dkUsed: number;
  /** Query rows per work item. */
  br: number;
  /** Keys per chunk. */
  bc: number;
  /** Padded head dim. */
  dp: number;
  threads: number;
  smemBytes: number;
}

/** Resolves a variant for `headDim` (the clamped DK and derived sizes). */
export function flashConfig(v: FlashVariant, headDim: number): FlashConfig {
  const dkUsed = Math.min(v.dk, headDim);
  const br = 4 * v.rg, bc = 4 * v.cg, dp = 4 * v.cg * v.td4;
  const kstr4 = dkUsed / 4 + 1;
  const stage4 = br * kstr4 + Math.max(bc * kstr4, (v.vk * dp) / 4);
  const smemBytes = 16 * stage4 + 4 * br * bc + 4 * br * v.cg + 4 * (br + bc);
  return { ...v, headDim, dkUsed, br, bc, dp, threads: v.rg * v.cg, smemBytes };
}

/** Device limits that decide the variant. */
export interface VariantLimits {
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
}

/**
 * The variant for `headDim` on a device: the smallest DP >= headDim, then the largest tile that
 * fits the limits.
 *
 * @example
 * ```ts
 * import { pickFlashVariant } from "./variants.ts";
 * const limits = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256 };
 * const c = pickFlashVariant(128, limits);
 * console.assert(c.br === 32 && c.bc === 32 && c.smemBytes <= 16384);
 * ```
 */
export function pickFlashVariant(headDim: number, limits: VariantLimits): FlashConfig {
  const dps = Object.keys(FLASH_VARIANTS).map(Number).sort((a, b) => a - b);
  const dp = dps.find((x) => x >= headDim);
  if (dp === undefined) throw new Error(`no flash variant for headDim ${headDim}`);
  for (const v of FLASH_VARIANTS[dp]) {
    const c = flashConfig(v, headDim);
    if (
      c.smemBytes <= limits.maxComputeWorkgroupStorageSize &&
      c.threads <= limits.maxComputeInvocationsPerWorkgroup
    ) {
      return c;
    }
  }
  throw new Error(`no flash variant for headDim ${headDim} fits ${JSON.stringify(limits)}`);
}

/** Pipeline-cache key of a resolved variant. */
export function flashKey(c: FlashConfig, dtype: string): string {
  return `flash_attention:d${c.headDim}:${dtype}:rg${c.rg}:cg${c.cg}:td${c.td4}:dk${c.dkUsed}:vk${c.vk}`;
}
