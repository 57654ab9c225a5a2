/**
 * The mask stage of the WebGPU backend for the policies and estimators beyond the reference
 * (src/selection.ts has the definitions): the sampled estimator (wgsl/estimate_sampled.wgsl) and
 * the row policies with their block lists (wgsl/select_row.wgsl), the token budget's threshold
 * (wgsl/select_tokens.wgsl), their buffers and bind groups, and the mask-reuse schedule
 * (`maskEvery`, src/_mask_schedule.ts). The reference path (pool -> draft map ->
 * radix select -> block lists) stays in op.ts; this stage tells it which passes a run records.
 *
 * @module
 */
import { type SampleTable, sampleTable } from "../selection.ts";
import { MaskSchedule } from "../_mask_schedule.ts";
import type { DraftSpec, DType, MaskConfig, Plan } from "../types.ts";
import type { GpuContext } from "./context.ts";
import { type Kernel, packParams, type ParamLayout, paramsBytes } from "./kernel.ts";
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

/** Mirror of `Params` in wgsl/select_tokens.wgsl. */
export const TOKENS_PARAMS: ParamLayout = [
  ["nbh", "u32"],
  ["g", "u32"],
  ["budget_lo", "u32"],
  ["budget_hi", "u32"],
];

/** Mirror of `Params` in wgsl/estimate_sampled.wgsl. */
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

/** The token-budget threshold (budget "tokens"): the percentile threshold or rowMass's floor. */
export function tokensKernel(ctx: GpuContext): Kernel {
  return ctx.kernel({
    key: "select_tokens",
    code: specialize("select_tokens"),
    bindings: [
      ["params", "uniform"],
      ["p", "read"],
      ["tiles", "read"],
      ["state", "storage"],
    ],
  });
}

/**
 * Tuning of the estimator's grouping: workgroups wanted at least (more query tiles per
 * workgroup share each key read, but fewer workgroups can leave a large GPU idle). Tests set 0
 * to force the widest grouping on small problems.
 */
export const SAMPLED_TUNING: { minWorkgroups: number } = { minWorkgroups: 1024 };

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
    bindings: [
      ["params", "uniform"],
      ["q", "read"],
      ["k", "read"],
      ["order", "read"],
      ["tiles", "read"],
      ["samples", "read"],
      ["coef", "read"],
      ["p", "storage"],
    ],
    constants: { D: headDim, WG: SAMPLED_WG },
  });
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
  /** Budget "tokens": the bind group of select_tokens (writes the percentile state). */
  tokensGroup?: GPUBindGroup;
  /** Sampled estimator: its params (rewritten per run: tensor bases and piece strides). */
  sampledParams?: GPUBuffer;
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
 * Policy, estimator and mask reuse of one WebGPU draft op; its schedule is
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
  #tokens?: Kernel;
  #sampled?: Kernel;
  #table?: SampleTable;
  #samples?: GPUBuffer;
  #coef?: GPUBuffer;
  /** Query tiles per workgroup of the estimator. */
  #qt = 1;

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
    if (c.policy !== "rowTopK" && c.budget === "tokens") this.#tokens = tokensKernel(ctx);
    if (c.estimator !== "draft") {
      const t = sampleTable(plan, c.samples, c.budget === "tokens");
      this.#table = t;
      const STORE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
      this.#samples = buffer("samples", t.table.byteLength, STORE, t.table);
      this.#coef = buffer("sample coefficients", t.coef.byteLength, STORE, t.coef);
      const group = sampleGroup(c.samples, spec.headDim, groupPairs * plan.g);
      this.#qt = group.qt;
      this.#sampled = sampledKernel(ctx, spec.headDim, spec.dtype, group);
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
    if (this.#tokens && d.state && d.tiles) {
      const params = this.#buffer(
        "tokens params",
        paramsBytes(TOKENS_PARAMS),
        U.UNIFORM | U.COPY_DST,
        new Uint8Array(packParams(TOKENS_PARAMS, {
          nbh: n,
          g,
          budget_lo: c.pairs % 2 ** 32,
          budget_hi: Math.floor(c.pairs / 2 ** 32),
        })),
      );
      out.tokensGroup = this.#tokens.bind({ params, p: d.p, tiles: d.tiles, state: d.state });
    }
    if (this.#sampled) {
      out.sampledParams = this.#buffer(
        "sampled params",
        paramsBytes(SAMPLED_PARAMS),
        U.UNIFORM | U.COPY_DST,
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
    if (!this.#sampled) return undefined;
    return this.#sampled.bind({
      params: sp.sampledParams!,
      q: t.q,
      k: t.k,
      order: t.order,
      tiles: t.tiles,
      samples: this.#samples!,
      coef: this.#coef!,
      p: sp.p,
    });
  }

  /** Writes the per-run params of a group (tensor bases depend on the caller's buffers). */
  writeParams(sp: StageGroup, a: PieceAddressing): void {
    if (!sp.sampledParams) return;
    this.#ctx.device.queue.writeBuffer(
      sp.sampledParams,
      0,
      packParams(SAMPLED_PARAMS, {
        ...a,
        nbh: sp.n,
        pair0: sp.pair0,
        g: this.#plan.g,
        tokens: this.#plan.tokens,
        stride: this.#table!.samples + 1,
        hybrid: (this.config.estimator === "hybrid" ? 1 : 0) |
          (this.config.budget === "tokens" ? 2 : 0),
        scale: this.#spec.scale,
      }),
    );
  }

  /** Records the sampled estimator of `n` pairs (after the draft map, which "hybrid" mixes in). */
  dispatchEstimate(pass: GPUComputePassEncoder, group: GPUBindGroup | undefined, n: number) {
    if (this.#sampled && group) {
      this.#sampled.dispatch(pass, group, n * Math.ceil(this.#plan.g / this.#qt));
    }
  }

  /** Records the token-budget threshold of a group (before select_lists). */
  dispatchTokens(pass: GPUComputePassEncoder, sp: StageGroup): void {
    if (this.#tokens && sp.tokensGroup) this.#tokens.dispatch(pass, sp.tokensGroup, sp.n);
  }

  /** Records the row policy's selection and block lists of a group. */
  dispatchSelect(pass: GPUComputePassEncoder, sp: StageGroup): void {
    if (this.#row && sp.rowGroup) this.#row.dispatch(pass, sp.rowGroup, sp.n * this.#plan.g);
  }
}
