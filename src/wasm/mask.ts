/**
 * The mask stage of the WebAssembly backend for every policy and estimator (src/selection.ts has
 * the definitions): per head, the importance map (draft map, sampled map or both) and the block
 * mask; between mask computations (`maskEvery`), the previous mask.
 *
 * @module
 */
import { type PolicyExports, sampleTable } from "../selection.ts";
import { MaskSchedule } from "../_mask_schedule.ts";
import type { DraftSpec, MaskConfig, Plan } from "../types.ts";
import type { AsmInstance } from "../_asm.ts";

/** Pointers of one head's buffers that the mask stage reads and writes. */
export interface HeadBuffers {
  /** Window-order rows of q, f32[tokens * headDim]. */
  qw: number;
  /** Keys packed by `packKeys` and their offsets. */
  kt: number;
  offsets: number;
  tileStart: number;
  tileLen: number;
  /** The importance map, f32[g * g], and the mask, u8[g * g]. */
  p: number;
  mask: number;
}

/** The tables of one run in wasm memory. */
export interface RunTables {
  samples: number;
  coef: number;
  /** Scratch of the sampled estimator: `scratchBytes` per thread. */
  scratch: number;
  scratchBytes: number;
}

/** What a worker needs to run the sampled estimator (src/wasm/pool.ts, phase SAMPLED). */
export interface SampledJob {
  tokens: number;
  samples: number;
  maxSamples: number;
  coef: number;
  hybrid: number;
  estScratch: number;
  estScratchBytes: number;
  /** Query tiles per item, and items per head. */
  tileChunk: number;
  nTileChunks: number;
}

/** Mask computation and reuse for one draft op; its schedule is {@linkcode MaskSchedule}'s. */
export class WasmMaskStage extends MaskSchedule {
  readonly config: MaskConfig;
  readonly #plan: Plan;
  readonly #spec: DraftSpec;
  readonly #table;

  constructor(spec: DraftSpec, plan: Plan) {
    super(spec.mask.maskEvery);
    this.config = spec.mask;
    this.#spec = spec;
    this.#plan = plan;
    this.#table = this.config.estimator === "draft"
      ? undefined
      : sampleTable(plan, this.config.samples, this.config.budget === "tokens");
  }

  /** `sampledMap`'s flags: bit 0 hybrid, bit 1 density (budget "tokens"). */
  get #flags(): number {
    return (this.config.estimator === "hybrid" ? 1 : 0) | (this.config.budget === "tokens" ? 2 : 0);
  }

  /** Whether the estimator samples (estimators "sampled" and "hybrid"). */
  get samples(): boolean {
    return this.#table !== undefined;
  }

  /**
   * Allocates and fills the run's tables (sample positions, coefficients, a scratch per
   * thread); call after the run's other allocations.
   */
  begin(asm: AsmInstance, threads = 1): RunTables {
    const t = this.#table;
    if (!t) return { samples: 0, coef: 0, scratch: 0, scratchBytes: 0 };
    const x = asm.x as unknown as PolicyExports;
    const { g, tokens } = this.#plan;
    const scratchBytes = Math.ceil(x.sampledScratchBytes(tokens, g) / 64) * 64;
    const samples = asm.alloc(t.table.byteLength, "the sample table");
    const coef = asm.alloc(t.coef.byteLength, "the sample table");
    const scratch = asm.alloc(scratchBytes * threads, "the sampled estimator");
    asm.i32(samples, t.table.length).set(t.table);
    asm.f32(coef, t.coef.length).set(t.coef);
    return { samples, coef, scratch, scratchBytes };
  }

  /**
   * The sampled estimator's part of a worker job: each head's query tiles cut into items of
   * `tileChunk` tiles, about four items per thread over `heads` heads.
   */
  job(run: RunTables, threads: number, heads: number): SampledJob {
    const g = this.#plan.g;
    const perHead = Math.min(g, Math.max(1, Math.ceil((4 * threads) / heads)));
    const tileChunk = Math.ceil(g / perHead);
    return {
      tokens: this.#plan.tokens,
      samples: run.samples,
      maxSamples: this.#table?.samples ?? 0,
      coef: run.coef,
      hybrid: this.#flags,
      estScratch: run.scratch,
      estScratchBytes: run.scratchBytes,
      tileChunk,
      nTileChunks: Math.ceil(g / tileChunk),
    };
  }

  /** Whether a computing run needs the draft map (asm `draftMap`) in `p` before `finish`. */
  get usesDraftMap(): boolean {
    return this.config.estimator !== "sampled";
  }

  /**
   * Completes one head's importance map in `b.p` (which holds the draft map when
   * {@linkcode usesDraftMap}) and writes its mask to `b.mask`; returns the kept count.
   * `estimated`: the sampled estimator already ran (on worker threads).
   */
  finish(asm: AsmInstance, run: RunTables, b: HeadBuffers, estimated = false): number {
    const c = this.config;
    const { g, tiles, tokens } = this.#plan;
    const x = asm.x;
    const px = x as unknown as PolicyExports;
    if (c.estimator !== "draft" && !estimated) {
      px.sampledMap(
        b.qw,
        b.kt,
        b.offsets,
        b.tileStart,
        b.tileLen,
        tiles,
        g,
        tokens,
        this.#spec.headDim,
        Math.fround(this.#spec.scale),
        run.samples,
        this.#table!.samples,
        run.coef,
        this.#flags,
        run.scratch,
        b.p,
        0,
        g,
      );
    }
    if (c.policy === "percentile" && c.budget === "tokens") {
      return px.selectMaskTokens(b.p, g, b.tileLen, c.pairs, b.mask);
    }
    if (c.policy === "percentile") return x.selectMask(b.p, g, c.keep, b.mask);
    if (c.policy === "rowMass" && c.budget === "tokens") {
      return px.selectRowMassTokens(b.p, g, c.tau, b.tileLen, c.pairs, b.mask);
    }
    return px.selectRows(b.p, g, c.rowKeep, c.policy === "rowMass" ? 1 : 0, c.tau, b.mask);
  }

  /** Copies head `bh`'s mask of the last computation into `mask`; returns its kept count. */
  reuse(asm: AsmInstance, last: Uint8Array, bh: number, mask: number): number {
    const g = this.#plan.g;
    const m = last.subarray(bh * g * g, (bh + 1) * g * g);
    asm.u8(mask, g * g).set(m);
    let kept = 0;
    for (let i = 0; i < m.length; i++) kept += m[i];
    return kept;
  }
}
