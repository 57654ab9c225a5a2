/**
 * The mask stage of the WebGPU backend, the counterpart of src/wasm/mask.ts (src/selection.ts
 * has the definitions): the reference passes (pool -> draft map -> radix select -> block lists),
 * the sampled estimator (wgsl/estimate_sampled.wgsl) and the row policies with their block lists
 * (wgsl/select_row.wgsl), the token budget's threshold (wgsl/select_tokens*.wgsl), their draft
 * scratch, buffers and bind groups, the recording of a piece's mask passes, and the mask-reuse
 * schedule (`maskEvery`, src/_mask_schedule.ts). The op (op.ts) owns the block lists' readback,
 * flash attention and the run queue; it calls {@linkcode GpuMaskStage.record} for a run that
 * computes the mask.
 *
 * @module
 */
import { type SampleTable, sampleTable } from "../selection.ts";
import { MaskSchedule } from "../_mask_schedule.ts";
import type { DraftSpec, DType, MaskConfig, Plan } from "../types.ts";
import type { GpuContext } from "./context.ts";
import {
  type BindingKind,
  type Kernel,
  packParams,
  type ParamLayout,
  paramsBytes,
} from "./kernel.ts";
import {
  HIST_CHUNK,
  HIST_PARAMS,
  histKernel,
  LISTS_PARAMS,
  listsKernel,
  MAP_PARAMS,
  MAP_ROWS,
  mapKernel,
  PICK_PARAMS,
  pickKernel,
  POOL_PARAMS,
  POOL_WG,
  poolKernel,
} from "./kernels.ts";
import type { Stage } from "./profile.ts";
import { specialize } from "./specialize.ts";

/** Mirror of `Params` in wgsl/select_row.wgsl. */
export const ROW_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["g", "u32"],
  ["tiles", "u32"],
  ["k", "u32"],
  ["mass", "u32"],
  ["tau", "f32"],
  ["pair0", "u32"],
  ["floor", "u32"],
];

/** Mirror of `Params` in wgsl/select_tokens.wgsl (the token threshold's histogram pass). */
export const TOKENS_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["g", "u32"],
  ["chunks", "u32"],
  ["chunk", "u32"],
  ["shift", "u32"],
];

/** Mirror of `Params` in wgsl/select_tokens_pick.wgsl (the token threshold's pick pass). */
export const TOKENS_PICK_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["shift", "u32"],
  ["budget_lo", "u32"],
  ["budget_hi", "u32"],
];

/**
 * u32 words of the token threshold's scratch per (batch, head) (`BH_WORDS` in the WGSL): 256
 * counts, 256 pair sums as lo and hi words, the pairs above the prefix (lo, hi), 2 spare.
 */
export const TOKENS_WORDS = 772;

/** Mirror of `Params` in wgsl/estimate_io.wgsl (both sampled estimators). */
export const SAMPLED_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["heads_per_row", "u32"],
  ["g", "u32"],
  ["tokens", "u32"],
  ["s_b", "u32"],
  ["s_t", "u32"],
  ["s_h", "u32"],
  ["base_q", "u32"],
  ["base_k", "u32"],
  ["stride", "u32"],
  ["hybrid", "u32"],
  ["scale", "f32"],
  ["pair0", "u32"],
  ["blocks", "u32"],
  ["splits_a", "u32"],
  ["span_a", "u32"],
  ["splits_b", "u32"],
  ["span_b", "u32"],
];

/** Bindings of the sampled estimators: wgsl/estimate_io.wgsl's, then the map `p`. */
const SAMPLED_BINDINGS: readonly (readonly [string, BindingKind])[] = [
  ["params", "uniform"],
  ["q", "read"],
  ["k", "read"],
  ["order", "read"],
  ["tiles", "read"],
  ["samples", "read"],
  ["coef", "read"],
  ["p", "storage"],
];

/** Invocations per workgroup of the sampled estimator. */
export const SAMPLED_WG = 64;

/** Floats of sample query rows the estimator keeps in workgroup memory (8 KiB). */
const SAMPLED_ROW_FLOATS = 2048;
/** Most sample rows per workgroup (per-thread arrays of that size). */
const SAMPLED_MAX_ROWS = 16;

/** Row policies and their block lists. */
export function rowKernel(ctx: GpuContext): Kernel {
  return ctx.kernel({
    key: "select_row",
    code: specialize("select_row"),
    bindings: [
      ["params", "uniform"],
      ["p", "read"],
      ["counts", "storage"],
      ["lists", "storage"],
      ["state", "read"],
      ["tiles", "read"],
    ],
  });
}

/**
 * Tuning of the token threshold's histogram pass: entries of a map per workgroup. 4096 (as the
 * reference select's `HIST_CHUNK`) spreads HunyuanVideo 768p's 980,100 entries per head over
 * 240 workgroups, 5,760 for 24 heads; maps up to 64 x 64 stay one workgroup. Tests set a few
 * entries to force many workgroups on small maps.
 */
export const TOKENS_TUNING: { chunk: number } = { chunk: 4096 };

/** Bind groups of the token threshold's passes over one set of `n` maps (one mask group). */
export interface TokensPasses {
  n: number;
  /** Histogram workgroups per map. */
  chunks: number;
  /** Per radix pass (shift 24, 16, 8, 0): the histogram's and the pick's bind group. */
  hist: GPUBindGroup[];
  pick: GPUBindGroup[];
}

/**
 * The token-budget threshold (budget "tokens": the percentile threshold or rowMass's floor) of
 * each of `n` maps: four radix passes of a histogram over many workgroups per map
 * (wgsl/select_tokens.wgsl) and a pick of one workgroup per map
 * (wgsl/select_tokens_pick.wgsl), writing state[x] = (threshold bits, 0).
 */
export class TokensSelect {
  readonly hist: Kernel;
  readonly pick: Kernel;

  constructor(ctx: GpuContext) {
    this.hist = ctx.kernel({
      key: "select_tokens",
      code: specialize("select_tokens"),
      bindings: [
        ["params", "uniform"],
        ["p", "read"],
        ["tiles", "read"],
        ["state", "read"],
        ["hist", "storage"],
      ],
    });
    this.pick = ctx.kernel({
      key: "select_tokens_pick",
      code: specialize("select_tokens_pick"),
      bindings: [
        ["params", "uniform"],
        ["hist", "storage"],
        ["state", "storage"],
      ],
    });
  }

  /**
   * The passes' bind groups for `n` maps of `g` x `g` in `p` with pair budget `pairs`; `hist`
   * holds at least `n * TOKENS_WORDS` u32 words, zero before the first run (each pick clears
   * the bins it read), `state` at least `n` (u32, u32).
   */
  bind(
    buffer: BufferMaker,
    a: {
      n: number;
      g: number;
      pairs: number;
      p: GPUBuffer;
      tiles: GPUBuffer;
      state: GPUBuffer;
      hist: GPUBuffer;
    },
  ): TokensPasses {
    const chunk = Math.max(1, Math.floor(TOKENS_TUNING.chunk));
    const chunks = Math.ceil((a.g * a.g) / chunk);
    const uniform = (layout: ParamLayout, values: Record<string, number>) =>
      buffer(
        "tokens params",
        paramsBytes(layout),
        GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        new Uint8Array(packParams(layout, values)),
      );
    const { n, g, p, tiles, state, hist } = a;
    const budget = { budget_lo: a.pairs % 2 ** 32, budget_hi: Math.floor(a.pairs / 2 ** 32) };
    return {
      n,
      chunks,
      hist: SHIFTS.map((shift) =>
        this.hist.bind({
          params: uniform(TOKENS_PARAMS, { nbh: n, g, chunks, chunk, shift }),
          p,
          tiles,
          state,
          hist,
        })
      ),
      pick: SHIFTS.map((shift) =>
        this.pick.bind({
          params: uniform(TOKENS_PICK_PARAMS, { nbh: n, shift, ...budget }),
          hist,
          state,
        })
      ),
    };
  }

  /** Records the four passes (WebGPU orders the dispatches of a pass). */
  record(pass: GPUComputePassEncoder, t: TokensPasses): void {
    for (let s = 0; s < SHIFTS.length; s++) {
      this.hist.dispatch(pass, t.hist[s], t.n * t.chunks);
      this.pick.dispatch(pass, t.pick[s], t.n);
    }
  }
}

/**
 * Tuning of the sampled estimators: workgroups wanted at least per dispatch (the per-key kernel
 * groups fewer query tiles per workgroup for them, the tiled one splits keys and tiles; more
 * work per workgroup shares each key read, but fewer workgroups can leave a large GPU idle).
 * Tests set 0 to force the widest grouping / no splits on small problems.
 */
export const SAMPLED_TUNING: {
  minWorkgroups: number;
  /** false: the per-key kernel (wgsl/estimate_sampled.wgsl) even where the tiled one runs. */
  tiled: boolean;
  /** Tile overrides of {@linkcode tiledShape} (benchmarks). */
  shape?: Partial<TiledShape>;
} = { minWorkgroups: 1024, tiled: true };

/**
 * How the estimator groups its sample rows: `sg` samples of each of `qt` query tiles per
 * workgroup, `qt * sg` rows in all (as many as fit `SAMPLED_ROW_FLOATS` at `headDim`, at most
 * `SAMPLED_MAX_ROWS`), fewer tiles where that would leave fewer than
 * `SAMPLED_TUNING.minWorkgroups` workgroups for the `queryTiles` of one dispatch (the pairs of a
 * mask group x g).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sampleGroup } from "./mask.ts";
 * assert.equal(JSON.stringify(sampleGroup(8, 128, 4032)), '{"sg":8,"qt":2}');
 * assert.equal(JSON.stringify(sampleGroup(2, 128, 4032)), '{"sg":2,"qt":3}');
 * assert.equal(JSON.stringify(sampleGroup(16, 256, 4032)), '{"sg":8,"qt":1}');
 * ```
 */
export function sampleGroup(
  samples: number,
  headDim: number,
  queryTiles: number,
): { sg: number; qt: number } {
  const rows = Math.max(1, Math.min(SAMPLED_MAX_ROWS, Math.floor(SAMPLED_ROW_FLOATS / headDim)));
  const sg = Math.min(samples, rows);
  const byRows = Math.max(1, Math.floor(rows / sg));
  const byCount = Math.max(1, Math.floor(queryTiles / SAMPLED_TUNING.minWorkgroups));
  return { sg, qt: Math.min(byRows, byCount) };
}

/** The sampled estimator for one head dim, dtype and sample grouping. */
export function sampledKernel(
  ctx: GpuContext,
  headDim: number,
  dtype: DType,
  group: { sg: number; qt: number },
): Kernel {
  return ctx.kernel({
    key: `estimate_sampled:d${headDim}:${dtype}:sg${group.sg}:qt${group.qt}`,
    code: specialize("estimate_sampled", {
      storage: dtype,
      consts: { SG: group.sg, QT: group.qt },
    }),
    bindings: SAMPLED_BINDINGS,
    constants: { D: headDim, WG: SAMPLED_WG },
  });
}

/**
 * Register tile of wgsl/estimate_tiled.wgsl: `4 * tm4` sample rows x `tn` keys per thread,
 * `rg x cg` threads (a row group = `cg` lanes, of one subgroup with `subgroups`), `sp` sample
 * slots per tile,
 * Q^T (`f16q`) and the K chunk (`f16k`) in f16 workgroup memory or f32.
 */
export interface TiledShape {
  tm4: number;
  tn: number;
  cg: number;
  rg: number;
  sp: number;
  f16q: boolean;
  f16k: boolean;
  /** Row groups per query tile (1 unless sp > 4 * tm4). */
  span: number;
  /** Row-group reductions by subgroup shuffles (else through workgroup memory). */
  subgroups: boolean;
}

/**
 * The tiled estimator's tile for a device, or undefined where no tile fits the workgroup memory
 * (the op then uses wgsl/estimate_sampled.wgsl). Row groups reduce by subgroup shuffles where the
 * device has `subgroups` of one power-of-two size (`subgroups`), else through workgroup memory.
 * Sample slots per tile: the sample count rounded up to a power of two; a thread holds 4 rows,
 * a tile's slots beyond span the row groups of one subgroup (`span`), or, where the subgroup is
 * too narrow or absent, more rows a thread. `SAMPLED_TUNING.shape` overrides the tile
 * (benchmarks, tests), `SAMPLED_TUNING.tiled = false` turns the kernel off (tests).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tiledShape } from "./mask.ts";
 * const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024 };
 * const s = tiledShape({ subgroupSize: 32, limits, f16: true }, 128, 2)!;
 * assert.equal(
 *   JSON.stringify(s),
 *   '{"tm4":1,"tn":4,"cg":8,"rg":32,"sp":2,"f16q":true,"f16k":true,"span":1,"subgroups":true}',
 * );
 * // No subgroups: reductions through workgroup memory (4 KiB of it here), 8 slots on a thread.
 * const n = tiledShape({ subgroupSize: 0, limits, f16: true }, 128, 8)!;
 * assert.equal(`${n.tm4},${n.rg},${n.span},${n.subgroups}`, "2,16,1,false");
 * // WebGPU's default 16 KiB: 32 rows x 16 keys.
 * const small = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256 };
 * const t = tiledShape({ subgroupSize: 32, limits: small, f16: true }, 128, 2)!;
 * assert.equal(`${t.tm4},${t.tn},${t.cg},${t.rg}`, "1,2,8,8");
 * ```
 */
export function tiledShape(
  dev: {
    /** The device's one subgroup size, 0 without `subgroups` (or with several sizes). */
    subgroupSize: number;
    limits: { maxComputeWorkgroupStorageSize: number; maxComputeInvocationsPerWorkgroup: number };
    /** f16 inputs on a `shader-f16` device. */
    f16: boolean;
  },
  headDim: number,
  samples: number,
): TiledShape | undefined {
  if (!SAMPLED_TUNING.tiled || headDim % 4 !== 0) return undefined;
  const want = SAMPLED_TUNING.shape;
  const sg = dev.subgroupSize;
  const subgroups = sg >= 4 && (sg & (sg - 1)) === 0 && (want?.subgroups ?? true);
  let sp = 1;
  while (sp < samples) sp *= 2;
  const cg = subgroups ? Math.min(want?.cg ?? 8, sg) : want?.cg ?? 8;
  // 4 rows a thread; a tile's slots beyond 4 span the row groups of one subgroup (on the H200,
  // 8 and 16 samples ran 6% and 4% faster so than on 8 rows a thread), more rows a thread only
  // where the subgroup is too narrow for the tile, or absent.
  const tm4 = Math.max(want?.tm4 ?? 1, subgroups ? sp / 4 / (sg / cg) : sp / 4);
  const f16q = dev.f16 && (want?.f16q ?? true);
  const f16k = dev.f16 && (want?.f16k ?? true);
  const d4 = headDim / 4;
  // More threads first (what the H200 sweep rewarded most), then longer key chunks (32 keys,
  // then 16, 8: what leaves room for the rows under small workgroup memory).
  const full = Math.max(1, 32 / cg);
  const tns = want?.tn ? [want.tn] : [full, full / 2, full / 4].filter((x) => x >= 1);
  for (const rg of want?.rg ? [want.rg] : [32, 16, 8, 4, 2, 1]) {
    for (const tn of tns) {
      const nt = rg * cg;
      const bytes = headDim * tm4 * rg * (f16q ? 8 : 16) + tn * cg * (d4 + 1) * (f16k ? 8 : 16) +
        (subgroups ? 0 : tm4 * rg * cg * 16);
      if (
        (subgroups ? nt % sg === 0 : nt >= 32) &&
        nt <= Math.min(256, dev.limits.maxComputeInvocationsPerWorkgroup) &&
        bytes <= dev.limits.maxComputeWorkgroupStorageSize
      ) {
        return {
          tm4,
          tn,
          cg,
          rg,
          sp,
          f16q,
          f16k,
          span: Math.max(1, sp / (4 * tm4)),
          subgroups,
        };
      }
    }
  }
  return undefined;
}

/** Pass A and pass B of wgsl/estimate_tiled.wgsl for one head dim, dtype and tile. */
export function tiledKernels(
  ctx: GpuContext,
  headDim: number,
  dtype: DType,
  s: TiledShape,
): { a: Kernel; b: Kernel } {
  const make = (pass: number) =>
    ctx.kernel({
      key: `estimate_tiled:${pass ? "b" : "a"}:d${headDim}:${dtype}:` +
        `${s.tm4}x${s.tn}:${s.rg}x${s.cg}:sp${s.sp}x${s.span}${s.subgroups ? "" : ":wg"}${
          s.f16q ? ":f16q" : ""
        }${s.f16k ? ":f16k" : ""}`,
      code: specialize("estimate_tiled", {
        storage: dtype,
        consts: {
          TM4: s.tm4,
          TN: s.tn,
          SP: s.sp,
          SPAN: s.span,
          SUBGROUPS: s.subgroups ? 1 : 0,
          PASS_B: pass,
          F16_Q: s.f16q ? 1 : 0,
          F16_K: s.f16k ? 1 : 0,
          ENABLE_F16: s.f16q || s.f16k ? 1 : 0,
          UD: headDim % 16 === 0 ? 4 : headDim % 8 === 0 ? 2 : 1,
        },
      }),
      // `stat` at binding 7, before `p`.
      bindings: [...SAMPLED_BINDINGS.slice(0, -1), ["stat", "storage"], ["p", "storage"]],
      constants: { D: headDim, RG: s.rg, CG: s.cg },
    });
  return { a: make(0), b: make(1) };
}

/** The tiled estimator's splits of a group (named as its params name them). */
export interface TiledSplits {
  /** Row blocks per pair. */
  blocks: number;
  splits_a: number;
  span_a: number;
  splits_b: number;
  span_b: number;
  /** Bytes of pass A's statistics (over `maxStatBytes` only where one split does not fit). */
  statBytes: number;
}

/**
 * How the tiled estimator splits a group of `n` pairs: row blocks per pair, and pass A's key
 * ranges and pass B's tile ranges, as many as make `SAMPLED_TUNING.minWorkgroups` workgroups
 * per pass (at least one chunk of keys / one tile each; pass A's statistics within
 * `maxStatBytes`).
 */
export function tiledSplits(
  s: TiledShape,
  plan: { g: number; tokens: number },
  n: number,
  maxStatBytes: number,
): TiledSplits {
  const rt = 4 * s.tm4 * s.rg;
  const blocks = Math.ceil((plan.g * s.sp) / rt);
  const want = Math.max(1, Math.ceil(SAMPLED_TUNING.minWorkgroups / (n * blocks)));
  const bc = s.tn * s.cg;
  const chunks = Math.ceil(plan.tokens / bc);
  // Pass A's (m, l) per row and split must fit one binding.
  const fit = Math.max(1, Math.floor(maxStatBytes / (n * blocks * rt * 8)));
  const spanA = Math.ceil(chunks / Math.min(want, chunks, fit)) * bc;
  const spanB = Math.ceil(plan.g / Math.min(want, plan.g));
  const splitsA = Math.ceil(plan.tokens / spanA);
  return {
    blocks,
    splits_a: splitsA,
    span_a: spanA,
    splits_b: Math.ceil(plan.g / spanB),
    span_b: spanB,
    statBytes: n * blocks * rt * splitsA * 8,
  };
}

/** Makes a buffer owned by the op (destroyed with it). */
export type BufferMaker = (
  label: string,
  size: number,
  usage: GPUBufferUsageFlags,
  data?: ArrayBufferView,
) => GPUBuffer;

/**
 * The stage's state for one mask group of a piece: pairs [pair0, pair0 + n) of the piece, whose
 * map is built in the op's scratch `p` (rows 0..n-1) and whose block lists are rows
 * pair0..pair0+n-1 of the piece's counts and lists.
 */
export interface StageGroup {
  pair0: number;
  n: number;
  /** Row policies: the bind group of select_row. */
  rowGroup?: GPUBindGroup;
  /** Budget "tokens": the threshold's passes (write the percentile state). */
  tokens?: TokensPasses;
  /** Sampled estimator: its params (rewritten per run: tensor bases and piece strides). */
  sampledParams?: GPUBuffer;
  /** Tiled estimator: the group's splits. */
  splits?: TiledSplits;
  p: GPUBuffer;
}

/** Tensor strides and bases of one piece, as the pool kernel gets them. */
export interface PieceAddressing {
  heads_per_row: number;
  s_b: number;
  s_t: number;
  s_h: number;
  base_q: number;
  base_k: number;
}

/**
 * The mask stage of one WebGPU draft op: its passes (reference, policies, estimators), draft
 * scratch, block lists and bind groups, and mask reuse; its schedule is
 * {@linkcode MaskSchedule}'s (a run that reuses the mask keeps the block lists in place).
 */
export class GpuMaskStage extends MaskSchedule {
  readonly config: MaskConfig;
  readonly #ctx: GpuContext;
  readonly #spec: DraftSpec;
  readonly #plan: Plan;
  readonly #buffer: BufferMaker;
  #row?: Kernel;
  /** select_row's state binding where no token budget applies. */
  #noState?: GPUBuffer;
  #tokens?: TokensSelect;
  #sampled?: Kernel;
  #table?: SampleTable;
  #samples?: GPUBuffer;
  #coef?: GPUBuffer;
  /** Query tiles per workgroup of the estimator. */
  #qt = 1;
  /** The tiled estimator (wgsl/estimate_tiled.wgsl) where it runs, in place of #sampled. */
  #tiled?: { a: Kernel; b: Kernel; shape: TiledShape; stat: GPUBuffer };

  /**
   * @param groupPairs Pairs in the op's largest mask group (sizes the estimator's grouping for
   *   the workgroups of one dispatch).
   */
  constructor(
    ctx: GpuContext,
    spec: DraftSpec,
    plan: Plan,
    buffer: BufferMaker,
    groupPairs: number = spec.batch * spec.heads,
  ) {
    super(spec.mask.maskEvery);
    this.config = spec.mask;
    this.#ctx = ctx;
    this.#spec = spec;
    this.#plan = plan;
    this.#buffer = buffer;
    const c = this.config;
    if (c.policy !== "percentile") this.#row = rowKernel(ctx);
    if (c.policy !== "rowTopK" && c.budget === "tokens") this.#tokens = new TokensSelect(ctx);
    if (c.estimator !== "draft") {
      const t = sampleTable(plan, c.samples, c.budget === "tokens");
      this.#table = t;
      const STORE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
      this.#samples = buffer("samples", t.table.byteLength, STORE, t.table);
      this.#coef = buffer("sample coefficients", t.coef.byteLength, STORE, t.coef);
      const shape = tiledShape(
        {
          subgroupSize: ctx.subgroupSize,
          limits: ctx.limits,
          f16: spec.dtype === "f16" && ctx.device.features.has("shader-f16"),
        },
        spec.headDim,
        c.samples,
      );
      const maxStat = ctx.limits.maxStorageBufferBindingSize;
      // Pass A's statistics of the largest group must fit one binding with one split.
      if (shape && tiledSplits(shape, plan, groupPairs, maxStat).statBytes <= maxStat) {
        let most = 0;
        for (let n = 1; n <= groupPairs; n++) {
          most = Math.max(most, tiledSplits(shape, plan, n, maxStat).statBytes);
        }
        const stat = buffer("sampled statistics", most, GPUBufferUsage.STORAGE);
        this.#tiled = { ...tiledKernels(ctx, spec.headDim, spec.dtype, shape), shape, stat };
      } else {
        const group = sampleGroup(c.samples, spec.headDim, groupPairs * plan.g);
        this.#qt = group.qt;
        this.#sampled = sampledKernel(ctx, spec.headDim, spec.dtype, group);
      }
    }
  }

  /** Whether a computing run records pool and draft-map passes. */
  get usesDraftMap(): boolean {
    return this.config.estimator !== "sampled";
  }

  /** Whether a computing run selects with the reference passes (histogram, pick, lists). */
  get usesPercentile(): boolean {
    return this.config.policy === "percentile";
  }

  /**
   * Whether the token-budget threshold (select_tokens) is computed: the percentile threshold,
   * or rowMass's floor; the op then keeps a state buffer for it.
   */
  get usesTokens(): boolean {
    return this.#tokens !== undefined;
  }

  /**
   * The stage's buffers and bind groups of one mask group, pairs [pair0, pair0 + n) of a
   * piece: over the scratch map `p` and the piece's counts and lists.
   */
  group(
    pair0: number,
    n: number,
    d: {
      p: GPUBuffer;
      counts: GPUBuffer;
      lists: GPUBuffer;
      /** The percentile state and the tile table (budget "tokens"). */
      state?: GPUBuffer;
      tiles?: GPUBuffer;
      /** The token threshold's bins, `n * TOKENS_WORDS` u32 at least (budget "tokens"). */
      tokensHist?: GPUBuffer;
    },
  ): StageGroup {
    const U = GPUBufferUsage;
    const { g, tiles } = this.#plan;
    const c = this.config;
    const out: StageGroup = { pair0, n, p: d.p };
    if (this.#row) {
      const params = this.#buffer(
        "row params",
        paramsBytes(ROW_PARAMS),
        U.UNIFORM | U.COPY_DST,
        new Uint8Array(packParams(ROW_PARAMS, {
          nbh: n,
          pair0,
          g,
          tiles,
          // rowMass under the token budget: no rowTopK cap, the budget's floor instead.
          k: this.#tokens ? g : c.rowKeep,
          mass: c.policy === "rowMass" ? 1 : 0,
          tau: c.tau,
          floor: this.#tokens ? 1 : 0,
        })),
      );
      this.#noState ??= this.#buffer("row state (unused)", 16, U.STORAGE);
      out.rowGroup = this.#row.bind({
        params,
        p: d.p,
        counts: d.counts,
        lists: d.lists,
        state: this.#tokens && d.state ? d.state : this.#noState,
        tiles: this.#tokens && d.tiles ? d.tiles : this.#noState,
      });
    }
    if (this.#tokens && d.state && d.tiles && d.tokensHist) {
      out.tokens = this.#tokens.bind(this.#buffer, {
        n,
        g,
        pairs: c.pairs,
        p: d.p,
        tiles: d.tiles,
        state: d.state,
        hist: d.tokensHist,
      });
    }
    if (this.#sampled || this.#tiled) {
      out.sampledParams = this.#buffer(
        "sampled params",
        paramsBytes(SAMPLED_PARAMS),
        U.UNIFORM | U.COPY_DST,
      );
    }
    if (this.#tiled) {
      out.splits = tiledSplits(
        this.#tiled.shape,
        this.#plan,
        n,
        this.#ctx.limits.maxStorageBufferBindingSize,
      );
    }
    return out;
  }

  /** The estimator's bind group over a piece's q and k (undefined without the estimator). */
  ioGroup(
    sp: StageGroup,
    t: {
      q: GPUBuffer | GPUBufferBinding;
      k: GPUBuffer | GPUBufferBinding;
      order: GPUBuffer;
      tiles: GPUBuffer;
    },
  ): GPUBindGroup | undefined {
    const common = {
      params: sp.sampledParams!,
      q: t.q,
      k: t.k,
      order: t.order,
      tiles: t.tiles,
      samples: this.#samples!,
      coef: this.#coef!,
      p: sp.p,
    };
    // Both passes have the same bindings (one layout shape), so one group serves both.
    if (this.#tiled) return this.#tiled.a.bind({ ...common, stat: this.#tiled.stat });
    return this.#sampled?.bind(common);
  }

  /** Writes the per-run params of a group (tensor bases depend on the caller's buffers). */
  writeParams(sp: StageGroup, a: PieceAddressing): void {
    if (!sp.sampledParams) return;
    const values = {
      ...a,
      nbh: sp.n,
      pair0: sp.pair0,
      g: this.#plan.g,
      tokens: this.#plan.tokens,
      stride: this.#table!.samples + 1,
      hybrid: (this.config.estimator === "hybrid" ? 1 : 0) |
        (this.config.budget === "tokens" ? 2 : 0),
      scale: this.#spec.scale,
    };
    // The per-key kernel reads no splits.
    const splits = sp.splits ?? { blocks: 0, splits_a: 0, span_a: 0, splits_b: 0, span_b: 0 };
    this.#ctx.device.queue.writeBuffer(
      sp.sampledParams,
      0,
      packParams(SAMPLED_PARAMS, { ...values, ...splits }),
    );
  }

  /**
   * Records the sampled estimator of a group (after the draft map, which "hybrid" mixes in),
   * through its bind group over q and k (`ioGroup`).
   */
  dispatchEstimate(pass: GPUComputePassEncoder, sp: StageGroup, group: GPUBindGroup | undefined) {
    const t = this.#tiled, x = sp.splits;
    if (t && x && group) {
      t.a.dispatch(pass, group, sp.n * x.blocks * x.splits_a);
      t.b.dispatch(pass, group, sp.n * x.blocks * x.splits_b);
    } else if (this.#sampled && group) {
      this.#sampled.dispatch(pass, group, sp.n * Math.ceil(this.#plan.g / this.#qt));
    }
  }

  /** Which sampled-map kernel the stage runs ("tiled", "rows") or none. */
  get estimatorKernel(): "tiled" | "rows" | undefined {
    return this.#tiled ? "tiled" : this.#sampled ? "rows" : undefined;
  }

  /** Records the token-budget threshold of a group (before select_lists). */
  dispatchTokens(pass: GPUComputePassEncoder, sp: StageGroup): void {
    if (this.#tokens && sp.tokens) this.#tokens.record(pass, sp.tokens);
  }

  /** Records the row policy's selection and block lists of a group. */
  dispatchSelect(pass: GPUComputePassEncoder, sp: StageGroup): void {
    if (this.#row && sp.rowGroup) this.#row.dispatch(pass, sp.rowGroup, sp.n * this.#plan.g);
  }

  // ------------------------------------------------------------------------------------------
  // The reference passes (pool -> draft map -> radix select -> block lists), their scratch and
  // bind groups, and the recording of every mask pass of a piece
  // ------------------------------------------------------------------------------------------

  #pool?: Kernel;
  #map?: Kernel;
  #hist?: Kernel;
  #pick?: Kernel;
  #lists?: Kernel;
  #order!: GPUBuffer;
  #tiles!: GPUBuffer;
  #invLen?: GPUBuffer;
  /** Draft scratch. */
  #scratch?: Scratch;
  /** Scratch-only bind groups by group size. */
  readonly #scratchGroups = new Map<number, ScratchGroups>();

  /**
   * The reference passes' pipelines, the token order and tile table they read, and the draft
   * scratch for groups of up to `pairs` pairs (the op's largest mask group); once, at creation.
   */
  makeScratch(pairs: number): void {
    const ctx = this.#ctx, plan = this.#plan;
    const { g, tiles } = plan;
    const D = this.#spec.headDim;
    const STORE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    this.#order = this.#buffer("order", plan.tokens * 4, STORE, plan.order);
    const tt = new Uint32Array(2 * tiles);
    for (let t = 0; t < tiles; t++) {
      tt[2 * t] = plan.tileStart[t];
      tt[2 * t + 1] = plan.tileLen[t];
    }
    this.#tiles = this.#buffer("tiles", tt.byteLength, STORE, tt);
    // f32(1 / len), correctly rounded (double rounding is exact for a quotient).
    const inv = Float32Array.from(plan.tileLen.subarray(0, g), (len) => 1 / len);
    this.#invLen = this.#buffer("inv_len", inv.byteLength, STORE, inv);
    this.#pool = poolKernel(ctx, D, this.#spec.dtype);
    this.#map = mapKernel(ctx, D);
    this.#hist = histKernel(ctx);
    this.#pick = pickKernel(ctx);
    this.#lists = listsKernel(ctx);
    const SCRATCH = STORE | GPUBufferUsage.COPY_SRC;
    const scratch: Scratch = { pairs, p: this.#buffer("p", pairs * g * g * 4, SCRATCH) };
    if (this.usesDraftMap) {
      scratch.qd = this.#buffer("qd", pairs * g * D * 4, SCRATCH);
      scratch.kd = this.#buffer("kd", pairs * g * D * 4, SCRATCH);
    }
    if (this.usesPercentile) {
      scratch.hist = this.#buffer("hist", pairs * 256 * 4, SCRATCH);
      scratch.state = this.#buffer("state", pairs * 8, SCRATCH);
    } else if (this.usesTokens) {
      scratch.state = this.#buffer("state", pairs * 8, SCRATCH);
    }
    if (this.usesTokens) {
      scratch.tokensHist = this.#buffer("tokens hist", pairs * TOKENS_WORDS * 4, SCRATCH);
    }
    this.#scratch = scratch;
  }

  /** Pairs in the largest mask group (the scratch's). */
  get groupPairs(): number {
    return this.#scratch?.pairs ?? 0;
  }

  #uniform(layout: ParamLayout, values: Record<string, number>): GPUBuffer {
    const bytes = packParams(layout, values);
    return this.#buffer(
      "params",
      bytes.byteLength,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      new Uint8Array(bytes),
    );
  }

  /** Bind groups of the scratch-only kernels (map, histogram, pick) for `n` pairs. */
  #localGroups(n: number): ScratchGroups {
    let local = this.#scratchGroups.get(n);
    if (local) return local;
    const spec = this.#spec;
    const { g } = this.#plan;
    const { qd, kd, p, hist, state } = this.#scratch!;
    const chunks = Math.ceil((g * g) / HIST_CHUNK);
    local = { hist: [], pick: [] };
    if (qd && kd) {
      const params = this.#uniform(MAP_PARAMS, {
        nbh: n,
        g,
        row_blocks: Math.ceil(g / MAP_ROWS),
        scale: spec.scale,
      });
      local.map = this.#map!.bind({ params, qd, kd, p });
    }
    if (hist && state) {
      local.hist = SHIFTS.map((shift) =>
        this.#hist!.bind({
          params: this.#uniform(HIST_PARAMS, { nbh: n, n: g * g, chunks, shift }),
          p,
          state,
          hist,
        })
      );
      local.pick = SHIFTS.map((shift) =>
        this.#pick!.bind({
          params: this.#uniform(PICK_PARAMS, { nbh: n, shift, keep: spec.mask.keep }),
          hist,
          state,
        })
      );
    }
    this.#scratchGroups.set(n, local);
    return local;
  }

  /**
   * The block lists of a piece of `nbh` pairs (persistent: mask reuse and flash attention read
   * them) and its mask groups over the scratch.
   */
  piece(nbh: number): MaskPiece {
    const U = GPUBufferUsage;
    const STORE = U.STORAGE | U.COPY_DST | U.COPY_SRC;
    const { g, tiles } = this.#plan;
    // Text query rows never change: every tile, written once here.
    const counts0 = new Uint32Array(nbh * tiles);
    for (let x = 0; x < nbh; x++) counts0.fill(tiles, x * tiles + g, (x + 1) * tiles);
    const counts = this.#buffer("counts", counts0.byteLength, STORE, counts0);
    const lists = this.#buffer("lists", nbh * tiles * tiles * 4, STORE);
    if (tiles > g) {
      const all = Uint32Array.from({ length: tiles }, (_, j) => j);
      for (let x = 0; x < nbh; x++) {
        for (let i = g; i < tiles; i++) {
          this.#ctx.device.queue.writeBuffer(lists, ((x * tiles + i) * tiles) * 4, all);
        }
      }
    }
    const scratch = this.#scratch!;
    const groups: MaskGroup[] = [];
    for (let pair0 = 0; pair0 < nbh; pair0 += scratch.pairs) {
      const n = Math.min(scratch.pairs, nbh - pair0);
      const group: MaskGroup = {
        pair0,
        n,
        local: this.#localGroups(n),
        stage: this.group(pair0, n, {
          p: scratch.p,
          counts,
          lists,
          state: scratch.state,
          tiles: this.#tiles,
          tokensHist: scratch.tokensHist,
        }),
      };
      if (scratch.state && this.usesPercentile) {
        const params = this.#uniform(LISTS_PARAMS, { nbh: n, g, tiles, pair0 });
        group.listsGroup = this.#lists!.bind({
          params,
          p: scratch.p,
          state: scratch.state,
          counts,
          lists,
        });
      }
      if (scratch.qd) {
        const bytes = paramsBytes(POOL_PARAMS);
        group.poolQParams = this.#buffer("pool params", bytes, U.UNIFORM | U.COPY_DST);
        group.poolKParams = this.#buffer("pool params", bytes, U.UNIFORM | U.COPY_DST);
      }
      groups.push(group);
    }
    return { counts, lists, groups };
  }

  /** Bind groups of a piece's mask passes that depend on where q and k live (one per group). */
  bindIo(
    d: MaskPiece,
    t: { q: GPUBuffer | GPUBufferBinding; k: GPUBuffer | GPUBufferBinding },
  ): MaskIoGroups {
    const groups: MaskIoGroups = {};
    const common = { order: this.#order, tiles: this.#tiles, inv_len: this.#invLen! };
    const { qd, kd } = this.#scratch!;
    if (qd && kd) {
      groups.poolQ = d.groups.map((mg) =>
        this.#pool!.bind({ params: mg.poolQParams!, x: t.q, ...common, pooled: qd })
      );
      groups.poolK = d.groups.map((mg) =>
        this.#pool!.bind({ params: mg.poolKParams!, x: t.k, ...common, pooled: kd })
      );
    }
    groups.sampled = d.groups.map((mg) =>
      this.ioGroup(mg.stage, {
        q: t.q,
        k: t.k,
        order: this.#order,
        tiles: this.#tiles,
      })
    );
    return groups;
  }

  /**
   * Writes the per-run params of a piece's mask groups (tensor strides `pool` and bases) and
   * clears the histogram, ahead of {@linkcode GpuMaskStage.record}.
   */
  writeRun(
    enc: GPUCommandEncoder,
    d: MaskPiece,
    pool: { heads_per_row: number; g: number; s_b: number; s_t: number; s_h: number },
    base: { q: number; k: number },
  ): void {
    const queue = this.#ctx.device.queue;
    const scratch = this.#scratch!;
    for (const mg of d.groups) {
      const at = { ...pool, nbh: mg.n, pair0: mg.pair0 };
      if (mg.poolQParams && mg.poolKParams) {
        queue.writeBuffer(mg.poolQParams, 0, packParams(POOL_PARAMS, { ...at, base: base.q }));
        queue.writeBuffer(mg.poolKParams, 0, packParams(POOL_PARAMS, { ...at, base: base.k }));
      }
      this.writeParams(mg.stage, { ...pool, base_q: base.q, base_k: base.k });
    }
    // The pick passes (select_pick, select_tokens_pick) leave the bins of their pairs cleared
    // for the next group; they start cleared whatever an earlier (failed) run left.
    if (scratch.hist) enc.clearBuffer(scratch.hist);
    if (scratch.tokensHist) enc.clearBuffer(scratch.tokensHist);
  }

  /** Records every mask pass of a piece, in the passes `pass` gives for each stage. */
  record(
    pass: (s: Stage) => GPUComputePassEncoder,
    d: MaskPiece,
    io: MaskIoGroups,
  ): void {
    const g = this.#plan.g;
    // Group by group: the scratch holds one group's maps at a time.
    d.groups.forEach((mg, j) => {
      const n = mg.n;
      if (io.poolQ && io.poolK && mg.local.map) {
        const poolGroups = Math.ceil((n * g * (this.#spec.headDim / 4)) / POOL_WG);
        this.#pool!.dispatch(pass("pool"), io.poolQ[j], poolGroups);
        this.#pool!.dispatch(pass("pool"), io.poolK[j], poolGroups);
        this.#map!.dispatch(pass("map"), mg.local.map, n * Math.ceil(g / MAP_ROWS));
      }
      const sampled = io.sampled?.[j];
      if (sampled) this.dispatchEstimate(pass("map"), mg.stage, sampled);
      if (mg.listsGroup) {
        const chunks = Math.ceil((g * g) / HIST_CHUNK);
        if (this.usesTokens) this.dispatchTokens(pass("select"), mg.stage);
        for (let s = 0; s < SHIFTS.length && !this.usesTokens; s++) {
          this.#hist!.dispatch(pass("select"), mg.local.hist[s], n * chunks);
          this.#pick!.dispatch(pass("select"), mg.local.pick[s], n);
        }
        this.#lists!.dispatch(pass("lists"), mg.listsGroup, n * g);
      } else {
        this.dispatchTokens(pass("select"), mg.stage);
        this.dispatchSelect(pass("select"), mg.stage);
      }
    });
  }
}

/** Radix-select digit positions, most significant first. */
const SHIFTS = [24, 16, 8, 0] as const;

/**
 * Draft scratch, used only while masks are built: sized for `pairs` pairs (the largest mask
 * group), shared by every group of every piece. Pooled Q and K only with the draft map, the
 * histogram and state only with the percentile policy (the state and the token threshold's
 * bins with the token budget).
 */
interface Scratch {
  pairs: number;
  qd?: GPUBuffer;
  kd?: GPUBuffer;
  p: GPUBuffer;
  hist?: GPUBuffer;
  state?: GPUBuffer;
  /** The token threshold's bins (budget "tokens"). */
  tokensHist?: GPUBuffer;
}

/** Bind groups of the kernels that only touch the scratch, for a group of `n` pairs. */
interface ScratchGroups {
  map?: GPUBindGroup;
  hist: GPUBindGroup[];
  pick: GPUBindGroup[];
}

/** One mask group: pairs [pair0, pair0 + n) of a piece, built in the scratch. */
export interface MaskGroup {
  pair0: number;
  n: number;
  local: ScratchGroups;
  /** Percentile policy: select_lists into the piece's rows pair0.. of counts and lists. */
  listsGroup?: GPUBindGroup;
  poolQParams?: GPUBuffer;
  poolKParams?: GPUBuffer;
  /** Policies and estimators beyond the reference (the row policies, tokens, sampled). */
  stage: StageGroup;
}

/** The mask buffers and bind groups of one piece. */
export interface MaskPiece {
  /** Block lists of every pair of the piece (persist across runs: mask reuse reads them). */
  counts: GPUBuffer;
  lists: GPUBuffer;
  groups: MaskGroup[];
}

/** Bind groups of a piece's mask passes that depend on where q and k live (one per group). */
export interface MaskIoGroups {
  poolQ?: GPUBindGroup[];
  poolK?: GPUBindGroup[];
  sampled?: (GPUBindGroup | undefined)[];
}
