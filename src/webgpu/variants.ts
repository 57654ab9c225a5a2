/**
 * The tile table of flash attention: one list of variants per padded head dim, picked per head
 * dim and device limits. Three kernel files share the bindings and params (wgsl/flash_io.wgsl):
 * - `tiled` rows (wgsl/flash_tile.wgsl and its steps): register-tiled, run by
 *   wgsl/flash_subgroup.wgsl where `subgroupRows` holds on the device, else by
 *   wgsl/flash_tiled.wgsl. Q^T of the tile resident in workgroup memory, the K/V chunk over the
 *   whole head dim. Thread (rg, cg) of an RG x CG workgroup owns
 *   TM = 4*tm4 query rows x tn keys of S and TM rows x td4 vec4 of O: BR = TM*RG rows,
 *   BC = tn*CG keys per chunk, DP = 4*CG*td4 head dims. Workgroup memory (bytes), mirrored from
 *   the WGSL:
 *     16 * (D*BR4 + max(BC*(D4+1), BC*DP4) + BC*(BR4+1) + BR4*CG)
 *   (Q^T, K or V chunk, P^T, row partials; BR4 = BR/4, D4 = D/4). Worked example, D 128 on a
 *   48 KiB device: 32 x 32 tile, 256 threads: 16 * (1024 + 1056 + 288 + 256) = 41984 bytes.
 *   For f16 inputs on a `shader-f16` device, `f16KV` keeps the K/V chunk in f16 (8 bytes per vec4:
 *   33536 bytes for the same tile) and `f16QT` Q^T too (25344 bytes); both hold the inputs
 *   exactly. With `subgroupRows` (a row group is one subgroup) P^T and the row partials leave
 *   workgroup memory and V gets its own buffer: qb*D*BR4 + kb*(BC*(D4+1) + BC*DP4) bytes (qb,
 *   kb = 8 in f16, else 16). `f16S` (f16 S arithmetic) is an A/B option only: its error grows with the
 *   logits (4.7e-3 against 2.4e-4 at logits of std 3), beyond the conformance rule.
 *   On an H100 (bench/RESULTS.md) threads per workgroup matter most: 256 threads with small
 *   per-thread tiles beat 64 threads with 4 x 4 tiles by 1.8x at the same tile and memory.
 * - `chunked` (wgsl/flash_chunked.wgsl): Q and K staged in head-dim chunks of DK, V in
 *   sub-chunks of VK keys; fits WebGPU's default 16 KiB for every head dim and serves head dims
 *   above 128. Thread (rg, cg) owns a 4 x 4 score tile and 4 rows x td4 vec4 of O:
 *     16 * (BR*KSTR4 + max(BC*KSTR4, VK*DP/4)) + 4 * BR*BC + 4 * BR*CG + 4 * (BR + BC)
 *   with BR = 4*RG, BC = 4*CG, KSTR4 = DK/4 + 1.
 *
 * Ordered per DP from the preferred variant down; the first one that fits the device's
 * maxComputeWorkgroupStorageSize and maxComputeInvocationsPerWorkgroup, and gets every option
 * it asks for (f16 workgroup memory: f16 inputs and `shader-f16`; `subgroupRows`: subgroups of
 * size cg), wins. The last of each DP fits WebGPU's default 16 KiB / 256 invocations.
 *
 * @module
 */
import type { DType } from "../types.ts";

/** A row of the table for the register-tiled kernel. */
export interface TiledVariant {
  kernel: "tiled";
  /** Query-row quads per thread (TM = 4*tm4 rows). */
  tm4: number;
  /** Row groups (BR = TM*rg query rows per work item). */
  rg: number;
  /** Column groups (BC = tn*cg keys per chunk). */
  cg: number;
  /** Keys per thread. */
  tn: number;
  /** Output vec4 per row per thread (DP = 4*cg*td4 head dims). */
  td4: number;
  /** Load the next chunk's K during P V, in registers (default false; PREFETCH_K). */
  prefetchK?: boolean;
  /** Load the chunk's V before S, in registers (default false; EARLY_V). */
  earlyV?: boolean;
  /** Source unroll of the S loop (default 4; reduced to a divisor of headDim/4). */
  ud?: number;
  /** Source unroll of the P V loop (default 4; must divide BC). */
  uj?: number;
  /**
   * K/V chunk in f16 workgroup memory (default false). Only for f16 inputs on a device with
   * `shader-f16`; elsewhere the variant runs as if it were false (F16_KV).
   */
  f16KV?: boolean;
  /** Q^T in f16 workgroup memory too (same condition; default false; F16_QT). */
  f16QT?: boolean;
  /**
   * S = Q K^T in f16 products summed in f16 over 4*ud dims, then in f32 (implies f16KV, f16QT;
   * F16_S).
   */
  f16S?: boolean;
  /**
   * A row group is one subgroup, or a part of one: row max and l by subgroup reductions (by
   * shuffle-xor butterflies over the cg lanes where cg is smaller than the subgroup), P by
   * subgroupShuffle, V in its own buffer; 2 barriers per chunk instead of 4, no P^T or partials
   * in workgroup memory. Only where the device has `subgroups` with one subgroup size that cg
   * divides (cg a power of two, see {@linkcode subRows}); elsewhere the variant runs as if it
   * were false. With cg = subgroup size / 2 and tn = 2 (sub-rows) a lane owns 2 keys of a
   * 32-key chunk, so each Q^T load feeds twice the FMAs. Selects wgsl/flash_subgroup.wgsl.
   */
  subgroupRows?: boolean;
  /**
   * K chunk rows without padding, columns XOR-swizzled by row (default false): conflict-free
   * like the padded stride, one vec4 per key less workgroup memory. Only where headDim / 4 is a
   * power of two; elsewhere the variant runs as if it were false (SWIZZLE_K).
   */
  swizzleK?: boolean;
  /**
   * With `subgroupRows`: V staged over K once S is done instead of into its own buffer (default
   * false): one barrier more per chunk, half the K/V memory (subgroup tiles within 16 KiB;
   * V_OVER_K).
   */
  vOverK?: boolean;
  /**
   * Q^T packed 8 rows per 16-byte word (with `f16QT` semantics: f16 inputs on a device with
   * `shader-f16`; only at tm4 = 2): half the workgroup-memory loads in S (default false;
   * PACKED_QT).
   */
  packedQT?: boolean;
  /**
   * With `subgroupRows`: the subgroup's halves take half of P V's keys each, over DP = 2*cg*td4
   * dims (see KEY_HALVES in the kernel): head dim 64 with subgroups of 32 without idle lanes
   * (default false).
   */
  keyHalves?: boolean;
  /**
   * With `f16KV` and `subgroupRows`: P V in f16 arithmetic, P rounded to f16 and each run of `uj`
   * keys summed in f16 before it is added into the f32 output (default false; see F16_PV in the
   * kernel).
   */
  f16PV?: boolean;
}

/** A row of the table for the head-dim-chunked kernel. */
export interface ChunkedVariant {
  kernel: "chunked";
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

/** One row of the table. */
export type FlashVariant = TiledVariant | ChunkedVariant;

/** Loads a phase ahead and unroll by 8: the fastest options of the large tiles on an H100. */
const FAST = { prefetchK: true, earlyV: true, ud: 8, uj: 8 } as const;
/**
 * The f16 subgroup tiles' options: f16 K/V and Q^T, Q^T packed 8 rows per load, subgroup rows,
 * V over K, swizzled K, loads ahead.
 */
const PACKED = {
  ...FAST,
  f16KV: true,
  f16QT: true,
  packedQT: true,
  subgroupRows: true,
  vOverK: true,
  swizzleK: true,
} as const;

/**
 * P V in f16 over whole 32-key chunks, the next chunk's K loaded right before staging (round
 * 23): fewer instructions and registers in P V than f32 products of f16 values.
 */
const F16PV = { f16PV: true, uj: 32, prefetchK: false } as const;

/**
 * The next chunk's K loaded right before staging rather than during P V, and P V unrolled over
 * the whole 32-key chunk (round 26: +3.7% dense on an H200 for the f32 P V pick).
 */
const LATE_K = { prefetchK: false, uj: 32 } as const;

/** The table: DP -> variants, preferred first. */
export const FLASH_VARIANTS: Readonly<Record<number, readonly FlashVariant[]>> = {
  32: [
    { kernel: "tiled", tm4: 1, rg: 16, cg: 8, tn: 4, td4: 1 }, // 64 x 32, 128 threads, 23.0 KiB
    { kernel: "tiled", tm4: 1, rg: 8, cg: 8, tn: 4, td4: 1 }, // 32 x 32, 64 threads, 14.0 KiB
  ],
  64: [
    // Sub-rows (two row groups of 16 lanes per subgroup of 32, 2 keys per lane), f32 tiles, 64 x
    // 32 in 24 KiB, for f16 and f32 inputs (NVIDIA H100, dense 16,384 tokens x 8 heads, draft
    // 8x48x80 + 256 text at 0.9; round 20): f16 19.7 TFLOP/s, draft 17.8 ms; f32 19.6, 17.9 ms
    // (17.7 / 19.2 ms and 16.6 / 19.3 ms for the next two rows).
    {
      kernel: "tiled",
      tm4: 1,
      rg: 16,
      cg: 16,
      tn: 2,
      td4: 1,
      ...FAST,
      subgroupRows: true,
      vOverK: true,
      swizzleK: true,
    },
    // Subgroups of 32, P V's keys split between the subgroup's halves (same card and shapes): f16
    // with shader-f16, the packed 64 x 32 tile in 12 KiB: 18.3 TFLOP/s, draft 18.7 ms (15.6 /
    // 21.1 for the next-but-one row); f32 tiles, 32 x 32 in 16 KiB: 16.6, draft 19.5 ms (15.3 /
    // 21.8). Both fit WebGPU's defaults.
    { kernel: "tiled", tm4: 2, rg: 8, cg: 32, tn: 1, td4: 1, ...PACKED, keyHalves: true },
    {
      kernel: "tiled",
      tm4: 1,
      rg: 8,
      cg: 32,
      tn: 1,
      td4: 1,
      ...FAST,
      subgroupRows: true,
      vOverK: true,
      swizzleK: true,
      keyHalves: true,
    },
    { kernel: "tiled", tm4: 1, rg: 16, cg: 16, tn: 2, td4: 1, ...FAST }, // 64 x 32, 256 thr, 37.0 KiB
    { kernel: "tiled", tm4: 1, rg: 8, cg: 16, tn: 2, td4: 1 }, // 32 x 32, 128 threads, 23.0 KiB
    { kernel: "tiled", tm4: 1, rg: 4, cg: 16, tn: 2, td4: 1 }, // 16 x 32, 64 threads, 16.0 KiB
  ],
  128: [
    // precision "f16-pv" (P V in f16 per 32-key chunk), f16 inputs, shader-f16 and subgroups of
    // 32 (NVIDIA H100; dense 16,384 tokens x 8 heads, draft 8x48x80 + 256 text at 0.9): the
    // packed 64 x 32 tile below with f16 P V: 23.3 TFLOP/s dense, draft 29.8 ms (round 23), and
    // its 16 KiB twin: 20.3, 32.6 ms. Skipped unless the op asks for it.
    { kernel: "tiled", tm4: 2, rg: 8, cg: 32, tn: 1, td4: 1, ...PACKED, ...F16PV },
    { kernel: "tiled", tm4: 2, rg: 4, cg: 32, tn: 1, td4: 1, ...PACKED, ...F16PV },
    // f16 inputs, shader-f16 and subgroups of 32 (same card and shapes): 64 x 32, f16 tiles, Q^T
    // packed 8 rows per load, V over K, 24 KiB: 20.6 TFLOP/s dense, draft 31.5 ms (19.4 / 33.5
    // without the packing; 16.1 dense for the round-5 pick).
    { kernel: "tiled", tm4: 2, rg: 8, cg: 32, tn: 1, td4: 1, ...PACKED, ...LATE_K },
    // Within WebGPU's default limits (16 KiB, 256 invocations): the same at 32 x 32, 128
    // threads, exactly 16 KiB: 18.6 TFLOP/s dense, draft 33.9 ms (4.4 TFLOP/s and 134.7 ms for
    // the chunked kernel that served 16 KiB before).
    { kernel: "tiled", tm4: 2, rg: 4, cg: 32, tn: 1, td4: 1, ...PACKED, ...LATE_K },
    // Sub-rows, f32 workgroup memory (f32 inputs, or f16 without shader-f16): 64 x 32, 256
    // threads, two row groups of 16 lanes per subgroup of 32 (2 keys, 8 dims per lane), 48 KiB
    // (H100 f32: 16.4 TFLOP/s, draft 34.8 ms, vs 11.6 for the next row; round 20).
    {
      kernel: "tiled",
      tm4: 1,
      rg: 16,
      cg: 16,
      tn: 2,
      td4: 2,
      ...FAST,
      subgroupRows: true,
      vOverK: true,
      swizzleK: true,
    },
    // Subgroups of 32, f32 workgroup memory: 32 x 32, 256 threads, 48 KiB (H200 f32: 12.5
    // TFLOP/s vs 10.5 for the next row)
    {
      kernel: "tiled",
      tm4: 1,
      rg: 8,
      cg: 32,
      tn: 1,
      td4: 1,
      ...FAST,
      subgroupRows: true,
      swizzleK: true,
    },
    { kernel: "tiled", tm4: 1, rg: 8, cg: 32, tn: 1, td4: 1, ...FAST }, // 32 x 32, 256 thr, 41.0 KiB
    { kernel: "tiled", tm4: 1, rg: 4, cg: 32, tn: 1, td4: 1 }, // 16 x 32, 128 threads, 29.0 KiB
    // f32 inputs within WebGPU's default 16 KiB, on subgroups of 16 or 32: sub-rows (16 lanes a
    // row group), 16 x 16, 64 threads, V over K: 16 * 128 * 4 (Q^T) + 16 * 16 * 32 (K or V) =
    // exactly 16 KiB. Every other f32 tiled row needs 29-48 KiB, so f32 under default limits fell
    // to the chunked kernel below. H200, Wan 480p BHSD dense under default limits: 4.79 -> 16.66
    // TFLOP/s (23.2 with the adapter's limits; bench/RESULTS.md).
    {
      kernel: "tiled",
      tm4: 1,
      rg: 4,
      cg: 16,
      tn: 1,
      td4: 2,
      ...FAST,
      subgroupRows: true,
      vOverK: true,
      swizzleK: true,
    },
    { kernel: "chunked", rg: 8, cg: 8, td4: 4, dk: 16, vk: 16 }, // 32 x 32, 64 threads, 15.8 KiB
  ],
  256: [
    { kernel: "chunked", rg: 16, cg: 16, td4: 4, dk: 32, vk: 16 }, // 64 x 64, 256 threads, 45.5 KiB
    { kernel: "chunked", rg: 16, cg: 8, td4: 8, dk: 32, vk: 8 }, // 64 x 32, 128 threads, 27.4 KiB
    { kernel: "chunked", rg: 8, cg: 8, td4: 8, dk: 16, vk: 8 }, // 32 x 32, 64 threads, 15.8 KiB
  ],
};

/** A variant resolved for one head dim: everything the kernel's overrides and key need. */
export type FlashConfig = FlashVariant & {
  /**
   * The kernel's wgsl/ file: `flash_subgroup` for a tiled variant with `subgroupRows` (kept on
   * this device), `flash_tiled` for one without, `flash_chunked`.
   */
  file: "flash_tiled" | "flash_subgroup" | "flash_chunked";
  headDim: number;
  /** Query rows per work item. */
  br: number;
  /** Keys per chunk. */
  bc: number;
  /** Padded head dim. */
  dp: number;
  threads: number;
  smemBytes: number;
  /** Placeholder consts of the WGSL (register shapes, loads per thread, flags). */
  consts: Record<string, number>;
  /** Override constants of the pipeline. */
  overrides: Record<string, number>;
};

/**
 * Whether a row group of `cg` lanes can be a subgroup of `subgroupSize` lanes or a part of one
 * (`cg` a power of two dividing it; 0 = no subgroups).
 */
export function subRows(subgroupSize: number, cg: number): boolean {
  return subgroupSize > 0 && cg <= subgroupSize && subgroupSize % cg === 0 && (cg & (cg - 1)) === 0;
}

/**
 * Resolves a variant for `headDim` (derived sizes, consts and overrides). `f16Smem`: the
 * inputs are f16 and the device has `shader-f16`; without it the f16 workgroup-memory options
 * (f16KV, f16QT, f16S) are dropped.
 */
export function flashConfig(
  v: FlashVariant,
  headDim: number,
  f16Smem = false,
  subgroupSize = 0,
): FlashConfig {
  if (v.kernel === "tiled") {
    const { f16KV, f16QT, f16S, subgroupRows, packedQT, ...plain } = v;
    const packed = !!packedQT && f16Smem && !f16S && v.tm4 === 2;
    v = f16Smem && (f16KV || f16QT || f16S || packed)
      ? {
        ...plain,
        f16KV: !!(f16KV || f16S),
        f16QT: !!(f16QT || f16S || packed),
        ...(f16S ? { f16S: true } : {}),
        ...(packed ? { packedQT: true } : {}),
      }
      : plain;
    if (subgroupRows && subRows(subgroupSize, v.cg) && (v.rg * v.cg) % subgroupSize === 0) {
      v = { ...v, subgroupRows: true };
    } else if (v.vOverK || v.keyHalves) v = { ...v, vOverK: false, keyHalves: false };
    // f16 P V needs V in f16 workgroup memory and P from subgroup shuffles.
    if (v.f16PV && !(v.f16KV && v.subgroupRows)) v = { ...v, f16PV: false };
  }
  if (v.kernel === "tiled" && v.swizzleK) {
    const d4 = headDim / 4;
    if ((d4 & (d4 - 1)) !== 0) v = { ...v, swizzleK: false };
  }
  const bc = (v.kernel === "tiled" ? v.tn : 4) * v.cg;
  const dp = 4 * (v.kernel === "tiled" && v.keyHalves ? v.cg / 2 : v.cg) * v.td4;
  const threads = v.rg * v.cg;
  if (dp < headDim) throw new Error(`flash variant ${JSON.stringify(v)} covers ${dp} < ${headDim}`);
  if (v.kernel === "tiled") {
    const br4 = v.tm4 * v.rg, d4 = headDim / 4, dp4 = dp / 4;
    const kstr4 = d4 + (v.swizzleK ? 0 : 1);
    const kv4 = Math.max(bc * kstr4, bc * dp4);
    const qb = v.f16QT ? 8 : 16, kb = v.f16KV ? 8 : 16;
    const smemBytes = v.subgroupRows
      ? qb * headDim * br4 + kb * (v.vOverK ? kv4 : bc * kstr4 + bc * dp4)
      : qb * headDim * br4 + kb * kv4 + 16 * (bc * (br4 + 1) + br4 * v.cg);
    const uj = v.uj ?? 4;
    const per = (n: number) => Math.ceil(n / threads);
    return {
      ...v,
      file: v.subgroupRows ? "flash_subgroup" : "flash_tiled",
      headDim,
      br: 4 * br4,
      bc,
      dp,
      threads,
      smemBytes,
      consts: {
        TM4: v.tm4,
        TN: v.tn,
        TD4: v.td4,
        QPT: per(v.packedQT ? v.rg * d4 : br4 * d4),
        KPT: per(bc * d4),
        VPT: per(bc * dp4),
        UD: [v.ud ?? 4, 4, 2, 1].find((u) => d4 % u === 0)!,
        UJ: (v.subgroupRows ? (v.keyHalves ? v.cg / 2 : v.cg) : bc) % uj === 0 ? uj : 1,
        PREFETCH_K: v.prefetchK ? 1 : 0,
        EARLY_V: v.earlyV ? 1 : 0,
        F16_KV: v.f16KV ? 1 : 0,
        F16_QT: v.f16QT ? 1 : 0,
        F16_S: v.f16S ? 1 : 0,
        ENABLE_F16: v.f16KV || v.f16QT || v.f16S ? 1 : 0,
        V_TOKENS_FROM_K: dp === headDim ? 1 : 0,
        PACKED_QT: v.packedQT ? 1 : 0,
        SWIZZLE_K: v.swizzleK ? 1 : 0,
        // The subgroup kernel's own flags.
        ...(v.subgroupRows
          ? {
            V_OVER_K: v.vOverK ? 1 : 0,
            KEY_HALVES: v.keyHalves ? 1 : 0,
            SUBGROUP_SIZE: subgroupSize,
            SUB_ROWS: v.cg < subgroupSize ? 1 : 0,
            F16_PV: v.f16PV ? 1 : 0,
          }
          : {}),
      },
      overrides: { RG: v.rg, CG: v.cg, D: headDim },
    };
  }
  const dk = Math.min(v.dk, headDim);
  const br = 4 * v.rg;
  const kstr4 = dk / 4 + 1;
  const stage4 = br * kstr4 + Math.max(bc * kstr4, (v.vk * dp) / 4);
  const smemBytes = 16 * stage4 + 4 * br * bc + 4 * br * v.cg + 4 * (br + bc);
  return {
    ...v,
    file: "flash_chunked",
    dk,
    headDim,
    br,
    bc,
    dp,
    threads,
    smemBytes,
    consts: { TD4: v.td4 },
    overrides: { RG: v.rg, CG: v.cg, D: headDim, DK: dk, VK: v.vk },
  };
}

/** Device limits that decide the variant. */
export interface VariantLimits {
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
}

/** What else decides the variant: f16 workgroup memory needs f16 inputs and `shader-f16`. */
export interface VariantOptions {
  dtype?: DType;
  /** Whether the device has `shader-f16` enabled. */
  shaderF16?: boolean;
  /** The subgroup size where `subgroups` is enabled and the adapter has one size, else 0. */
  subgroupSize?: number;
  table?: Readonly<Record<number, readonly FlashVariant[]>>;
  /** The op asked for `precision: "f16-pv"`: rows with `f16PV` may serve it (else skipped). */
  f16PV?: boolean;
  /**
   * Token counts of the query tiles of a draft op (its plan's `tileLen`): work items hold `br`
   * rows of one tile, so ragged tiles leave rows idle; see {@linkcode pickFlashVariant}.
   */
  tileLens?: ArrayLike<number>;
}

/**
 * Share of the rows of work items of `br` rows that hold a query, for tiles of `tileLens`
 * tokens (1 when every tile is a multiple of `br`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rowEfficiency } from "./variants.ts";
 * assert.equal(rowEfficiency([128, 96], 64), 224 / 256);
 * assert.equal(rowEfficiency([128, 96], 32), 1);
 * ```
 */
export function rowEfficiency(tileLens: ArrayLike<number>, br: number): number {
  let rows = 0, slots = 0;
  for (let i = 0; i < tileLens.length; i++) {
    rows += tileLens[i];
    slots += Math.ceil(tileLens[i] / br) * br;
  }
  return slots ? rows / slots : 1;
}

/**
 * A draft op takes a later fitting variant with fewer rows per work item when that fills its
 * ragged tiles this much better: the 64-row tile is ~8% faster per busy row than its 32-row
 * twin (NVIDIA H100, round 14), and Wan 480p's windows (87% full at 64 rows, 99.5% at 32) ran
 * 7-14% faster on the twin.
 */
const RAGGED_GAIN = 1.1;

/**
 * Whether `a` is `b`'s tile with other row groups only (same kernel, shape per thread, options):
 * the per-row speeds that `RAGGED_GAIN` assumes hold between twins only (a different tile may
 * be far slower per row: the 32-row f32 tile runs at 0.7x the 64-row sub-rows tile).
 */
function isTwin(a: FlashConfig, b: FlashConfig): boolean {
  // The kernel's consts and overrides are the whole variant; RG and the loads per thread
  // (derived from the thread count) are what row groups change.
  const shape = (c: FlashConfig) => {
    const { QPT: _q, KPT: _k, VPT: _v, ...consts } = c.consts;
    const { RG: _rg, ...overrides } = c.overrides;
    return JSON.stringify([c.file, consts, overrides]);
  };
  return shape(a) === shape(b);
}

/**
 * The variant for `headDim` on a device: the smallest DP >= headDim, then the first variant
 * that fits the limits; for a draft op (`tileLens`), its twin with fewer rows per item (a later
 * fitting variant that differs in row groups only) instead where the twin's row efficiency is
 * `RAGGED_GAIN` times higher.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pickFlashVariant } from "./variants.ts";
 * const limits = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256 };
 * const c = pickFlashVariant(128, limits);
 * assert.ok(c.kernel === "chunked" && c.smemBytes <= 16384);
 * ```
 */
export function pickFlashVariant(
  headDim: number,
  limits: VariantLimits,
  options: VariantOptions = {},
): FlashConfig {
  const table = options.table ?? FLASH_VARIANTS;
  const f16Smem = options.dtype === "f16" && !!options.shaderF16;
  const dps = Object.keys(table).map(Number).sort((a, b) => a - b);
  const dp = dps.find((x) => x >= headDim);
  if (dp === undefined) throw new Error(`no flash variant for headDim ${headDim}`);
  const fitting: FlashConfig[] = [];
  for (const v of table[dp]) {
    // f16 P V departs from the reference's f32 accumulators: only where the op asked for it.
    if (v.kernel === "tiled" && v.f16PV && !options.f16PV) continue;
    const c = flashConfig(v, headDim, f16Smem, options.subgroupSize ?? 0);
    const options16 = ["f16KV", "f16QT", "f16S", "subgroupRows", "packedQT", "f16PV"] as const;
    if (v.kernel === "tiled" && options16.some((o) => v[o] && !(c as TiledVariant)[o])) continue;
    if (
      c.smemBytes <= limits.maxComputeWorkgroupStorageSize &&
      c.threads <= limits.maxComputeInvocationsPerWorkgroup
    ) {
      fitting.push(c);
    }
  }
  const [first] = fitting;
  if (!first) {
    throw new Error(`no flash variant for headDim ${headDim} fits ${JSON.stringify(limits)}`);
  }
  const lens = options.tileLens;
  if (lens) {
    const twin = fitting.find((c) => c.br < first.br && isTwin(c, first));
    if (twin && rowEfficiency(lens, twin.br) >= RAGGED_GAIN * rowEfficiency(lens, first.br)) {
      return twin;
    }
  }
  return first;
}

/** Pipeline-cache key of a resolved variant. */
export function flashKey(c: FlashConfig, dtype: string): string {
  const shape = [...Object.entries(c.consts), ...Object.entries(c.overrides)]
    .map(([k, v]) => `${k}${v}`).join(":");
  return `flash:${c.file}:${dtype}:${shape}`;
}
