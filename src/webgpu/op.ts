/**
 * One WebGPU attention op (dense, or draft when built with a plan). Pipelines and persistent
 * buffers (token order, tile table, work items, draft scratch, block lists) are made once, at
 * creation; a run uploads, records every pass of every piece in one command buffer
 * (pool -> draft map -> radix select -> block lists -> flash attention), submits once and reads
 * back only the output. Runs of one op are serialised (they share scratch and readback buffers).
 *
 * Memory: the block lists (and counts) of every (batch, head) pair persist (mask reuse reads
 * them); the draft scratch (pooled Q and K, the importance map, the select histogram and state)
 * holds one *mask group* of pairs (`MASK_TUNING` in pieces.ts sizes it) and is reused by every
 * group of every piece: a computing run records pool -> map -> select -> lists group by group,
 * each group's lists written at its pairs' rows. Dispatches within a pass, and passes within a
 * command buffer, are ordered, so the reuse needs no synchronisation.
 *
 * The mask stage (its pipelines, scratch, block lists, bind groups and the recording of its
 * passes) lives in mask.ts; uploads, read-backs, BSHD gathers and caller-buffer checks in io.ts;
 * stage timing (`profile()`) in profile.ts.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import { workItems } from "../plan.ts";
import type {
  DenseSpec,
  DraftKernelOp,
  DraftSpec,
  GpuRunArgs,
  MaskResult,
  Plan,
  RunOptions,
  TensorArray,
} from "../types.ts";
import { Snapshots } from "../_snapshot.ts";
import type { GpuContext } from "./context.ts";
import { type Kernel, packParams, paramsBytes } from "./kernel.ts";
import { FLASH_PARAMS, flashKernel } from "./kernels.ts";
import {
  groupPairs,
  type Piece,
  scratchPerPair,
  splitPieces,
  type Strides,
  strides,
} from "./pieces.ts";
import { GpuMaskStage, type MaskIoGroups, type MaskPiece } from "./mask.ts";
import {
  checkBuffers,
  copyHeads,
  diagnose,
  HeadStaging,
  makeUploads,
  mapAll,
  mapEach,
  type Reader,
  type Slice,
  slice,
  type TensorName,
  TENSORS,
  type Uploads,
  writeUploads,
} from "./io.ts";
import {
  beginTimedPass,
  makeProfiler,
  type Profiler,
  resolveTimestamps,
  type Stage,
  STAGES,
  type StageTimes,
  stageTimes,
} from "./profile.ts";
import { type FlashConfig, flashConfig, type FlashVariant, pickFlashVariant } from "./variants.ts";

/** Draft-only buffers and bind groups of one piece (src/webgpu/mask.ts makes them). */
interface DraftPiece extends MaskPiece {
  /** Readback of counts and lists for lastMask(), made on first use. */
  maskRead?: { counts: GPUBuffer; lists: GPUBuffer };
}

interface PieceState {
  piece: Piece;
  flashParams: GPUBuffer;
  draft?: DraftPiece;
  /** Upload/readback buffers of run(q, k, v), made on first use. */
  io?: Uploads;
  /** Bind groups over `io`. */
  ioGroups?: IoGroups;
}

/** Bind groups that depend on where q/k/v/out live (the mask stage's: one per mask group). */
interface IoGroups {
  flash: GPUBindGroup;
  mask?: MaskIoGroups;
}

export { STAGES };
export type { Stage, StageTimes };

/** A dense or draft attention op on one GPU device. */
export class WebGpuOp implements DraftKernelOp {
  readonly spec: DenseSpec | DraftSpec;
  readonly plan: Plan | undefined;
  readonly config: FlashConfig;
  readonly #ctx: GpuContext;
  /** The op as its read-backs see it (src/webgpu/io.ts). */
  readonly #reader: Reader;
  readonly #eb: number;
  readonly #strides: Strides;
  readonly #pieces: PieceState[] = [];
  readonly #owned: GPUBuffer[] = [];
  /** Bytes of the owned buffers that {@linkcode WebGpuOp.extraBytes} counts. */
  #extraBytes = 0;
  #flash!: Kernel;
  /** The mask stage of a draft op: its passes, scratch and block lists, and mask reuse. */
  #stage?: GpuMaskStage;
  /** Whether the run being recorded computes the mask (else it reuses the block lists). */
  #due = false;
  /** order, tile table and work items of the flash kernel, concatenated (u32). */
  #table!: GPUBuffer;
  #tilesAt = 0;
  #itemsAt = 0;
  #itemCount!: number;
  /** Work items per pair dispatched ahead of the others (the text query tiles'). */
  #leadItems = 0;
  #dummy!: GPUBuffer;
  readonly #ready: Promise<void>;
  readonly #onDispose: (op: WebGpuOp) => void;
  #tail: Promise<unknown> = Promise.resolve();
  /**
   * Typed-array runs called but not yet submitted: while one is, the input buffers hold (or
   * will hold) its inputs, so a new run copies its own instead of writing them at the call.
   */
  #unsubmitted = 0;
  /** Copies of the inputs of runs that wait behind an unsubmitted one. */
  readonly #snapshots = new Snapshots();
  #disposed = false;
  #hasRun = false;
  /**
   * Set when a BSHD batch element exceeds a binding: the op's own buffers then hold the tensors
   * per head (BHSD order), filled by run(q, k, v) on typed arrays; caller buffers in BSHD cannot
   * be split that way, and runBuffers() answers with this error.
   */
  #bshdTooLarge?: DraftAttentionError;
  /** Host staging of one piece in BHSD order (typed-array runs of a split BSHD op). */
  #staging?: HeadStaging;
  /** Query set and buffers of {@linkcode WebGpuOp.profile}, made on first use. */
  #profiler?: Profiler;

  /**
   * @param variant Flash-attention variant to use instead of the table's pick (benchmarks and
   *   tests; it must fit the device; its f16 workgroup-memory options apply only to f16 inputs
   *   on a device with `shader-f16`).
   */
  constructor(
    ctx: GpuContext,
    spec: DenseSpec | DraftSpec,
    plan: Plan | undefined,
    onDispose: (op: WebGpuOp) => void,
    variant?: FlashVariant,
  ) {
    this.#ctx = ctx;
    this.#reader = { ctx, disposed: () => this.#disposed };
    this.spec = spec;
    this.plan = plan;
    this.#onDispose = onDispose;
    this.#eb = spec.dtype === "f16" ? 2 : 4;
    const shaderF16 = ctx.device.features.has("shader-f16");
    const subgroupSize = ctx.subgroupSize;
    this.config = variant
      ? flashConfig(variant, spec.headDim, spec.dtype === "f16" && shaderF16, subgroupSize)
      : pickFlashVariant(spec.headDim, ctx.limits, {
        ...(plan ? { tileLens: plan.tileLen } : {}),
        dtype: spec.dtype,
        shaderF16,
        subgroupSize,
        f16PV: spec.precision === "f16-pv",
      });
    if (
      this.config.smemBytes > ctx.limits.maxComputeWorkgroupStorageSize ||
      this.config.threads > ctx.limits.maxComputeInvocationsPerWorkgroup
    ) {
      // An explicit variant (benchmarks, tests) that the device cannot run: say so here rather
      // than dispatch an invalid pipeline.
      throw new DraftAttentionError(
        "TOO_LARGE",
        "variant",
        `needs ${this.config.smemBytes} B of workgroup memory and ${this.config.threads} ` +
          `invocations; the device allows ${ctx.limits.maxComputeWorkgroupStorageSize} B and ` +
          `${ctx.limits.maxComputeInvocationsPerWorkgroup}`,
      );
    }
    const g = plan?.g ?? 0;
    const tiles = plan?.tiles ?? 0;
    const lim = ctx.limits;
    const slack = lim.minStorageBufferOffsetAlignment;
    const pieceLimits = {
      maxBytes: Math.min(lim.maxStorageBufferBindingSize, lim.maxBufferSize) - slack,
      perPairBytes: plan ? Math.max(g * spec.headDim * 4, g * g * 4, tiles * tiles * 4) : 0,
    };
    let pieces: Piece[];
    let gpuLayout = spec;
    try {
      pieces = splitPieces(spec, pieceLimits);
    } catch (e) {
      if (!(spec.layout === "BSHD" && e instanceof DraftAttentionError && e.field === "q")) throw e;
      // The heads of a BSHD batch element are interleaved, so no binding range holds one head.
      // Typed-array runs can still go per head: the op's buffers hold the tensors in BHSD order.
      gpuLayout = { ...spec, layout: "BHSD" };
      pieces = splitPieces(gpuLayout, pieceLimits);
      this.#staging = new HeadStaging(spec, pieces);
      this.#bshdTooLarge = new DraftAttentionError(
        "TOO_LARGE",
        "q",
        `${e.message.replace(/; the BHSD layout can be split per head$/, "")}; BSHD GPU ` +
          `buffers cannot be split per head: pass typed arrays (uploaded per head) or use BHSD`,
      );
    }
    this.#strides = strides(gpuLayout);

    const [, ready] = ctx.scoped("creating the op", () => this.#create(pieces));
    // Creation errors (shader compilation, out of memory) surface at the first run.
    this.#ready = ready;
    ready.catch(() => {});
  }

  /** Pipelines and persistent buffers; on a synchronous failure, frees what it made. */
  #create(pieces: Piece[]): void {
    try {
      this.#createUnguarded(pieces);
    } catch (e) {
      for (const b of this.#owned) b.destroy();
      this.#owned.length = 0;
      this.#extraBytes = 0;
      throw e;
    }
  }

  #createUnguarded(pieces: Piece[]): void {
    const ctx = this.#ctx, spec = this.spec, plan = this.plan;
    const g = plan?.g ?? 0;
    const tiles = plan?.tiles ?? 0;
    const D = spec.headDim;
    const U = GPUBufferUsage;
    const STORE = U.STORAGE | U.COPY_DST;
    this.#flash = flashKernel(ctx, this.config, spec.dtype, !plan);
    this.#dummy = this.#buffer("dummy", 16, STORE);
    let items: Uint32Array;
    if (plan) {
      items = new Uint32Array(workItems(plan, this.config.br).buffer);
      const most = Math.max(...pieces.map((p) => p.nbh));
      const mc = (spec as DraftSpec).mask;
      const draftMap = mc.estimator !== "sampled";
      const percentile = mc.policy === "percentile";
      const tokens = mc.budget === "tokens" && mc.policy !== "rowTopK";
      const perPair = scratchPerPair(g, D, { draftMap, percentile, tokens });
      const pairs = groupPairs(perPair, most);
      this.#stage = new GpuMaskStage(
        ctx,
        spec as DraftSpec,
        plan,
        (label, size, usage, data) => this.#buffer(label, size, usage, data),
        pairs,
      );
      this.#stage.makeScratch(pairs);
    } else {
      // Dense: queries in runs of BR rows; order, tiles and lists are not read.
      const n = Math.ceil(spec.tokens / this.config.br);
      items = new Uint32Array(3 * n);
      for (let i = 0; i < n; i++) {
        items[3 * i + 1] = i * this.config.br;
        items[3 * i + 2] = Math.min(this.config.br, spec.tokens - i * this.config.br);
      }
    }
    this.#itemCount = items.length / 3;
    // Text query tiles (g.., last in the table, whose items are in tile order) go first.
    if (plan) {
      const n = this.#itemCount;
      while (this.#leadItems < n && items[3 * (n - 1 - this.#leadItems)] >= g) this.#leadItems++;
    }
    const order = plan ? plan.order.length : 0;
    const table = new Uint32Array(order + 2 * tiles + items.length);
    if (plan) table.set(plan.order);
    for (let t = 0; t < tiles; t++) {
      table[order + 2 * t] = plan!.tileStart[t];
      table[order + 2 * t + 1] = plan!.tileLen[t];
    }
    table.set(items, order + 2 * tiles);
    this.#tilesAt = order;
    this.#itemsAt = order + 2 * tiles;
    this.#table = this.#buffer("table", table.byteLength, STORE, table);
    for (const piece of pieces) {
      const flashParams = this.#buffer(
        "flash params",
        paramsBytes(FLASH_PARAMS),
        U.UNIFORM | U.COPY_DST,
      );
      const state: PieceState = { piece, flashParams };
      if (plan) state.draft = this.#stage!.piece(piece.nbh);
      this.#pieces.push(state);
    }
  }

  /** A buffer owned by the op (destroyed with it), counted in `extraBytes`. */
  #buffer(
    label: string,
    size: number,
    usage: GPUBufferUsageFlags,
    data?: ArrayBufferView,
  ): GPUBuffer {
    const b = this.#ioBuffer(label, size, usage, data);
    this.#extraBytes += b.size;
    return b;
  }

  /**
   * A buffer owned by the op but not counted in `extraBytes`: uploads and readbacks of
   * run(q, k, v), lastMask()'s and the profiler's readbacks.
   */
  #ioBuffer(
    label: string,
    size: number,
    usage: GPUBufferUsageFlags,
    data?: ArrayBufferView,
  ): GPUBuffer {
    const b = this.#ctx.buffer(label, size, usage, data);
    this.#owned.push(b);
    return b;
  }

  /**
   * Bytes of the GPU buffers the op holds beyond the caller's q, k, v and out: token order,
   * tile table and work items, params, draft scratch, counts and block lists (the exact sizes
   * created). Leaves out the upload and readback buffers of `run(q, k, v)` (copies of q, k, v
   * and out), the readbacks of `lastMask()` and the profiler's buffers, made on first use of
   * those calls. 0 after `dispose()`.
   */
  get extraBytes(): number {
    return this.#extraBytes;
  }

  /** Pairs in the largest mask group (0 for a dense op). */
  get maskGroupPairs(): number {
    return this.#stage?.groupPairs ?? 0;
  }

  /**
   * The sampled-map kernel of the op's estimator: "tiled" (wgsl/estimate_tiled.wgsl), "rows"
   * (wgsl/estimate_sampled.wgsl, where no tile fits the workgroup memory), undefined for the
   * draft estimator.
   */
  get estimatorKernel(): "tiled" | "rows" | undefined {
    return this.#stage?.estimatorKernel;
  }

  /** Pieces the op is split into (one unless a tensor exceeds a binding). */
  get pieceCount(): number {
    return this.#pieces.length;
  }

  // ------------------------------------------------------------------------------------------
  // Public API
  // ------------------------------------------------------------------------------------------

  /**
   * Takes q, k and v before it returns (the runtime has checked them): when no earlier typed
   * run of this op is still to be submitted, they are written to the op's input buffers now
   * (`writeBuffer` copies at the call, and the GPU queue orders the write after every run
   * submitted before), else copied to wait for their turn. Submission and readback follow in the
   * op's queue order; every failure, a failed write included, rejects the returned promise.
   */
  run(q: TensorArray, k: TensorArray, v: TensorArray, options?: RunOptions): Promise<TensorArray> {
    let written: Promise<void> | undefined;
    let copies: TensorArray[] | undefined;
    // A disposed op or a lost device rejects below without reading the inputs.
    if (!this.#disposed && !this.#ctx.lost) {
      if (this.#unsubmitted === 0) {
        try {
          [, written] = this.#ctx.scoped("run()", () => this.#writeInputs(q, k, v));
        } catch (e) {
          written = Promise.reject(e);
        }
        written.catch(() => {}); // awaited by the run below
      } else copies = this.#snapshots.take([q, k, v]);
    }
    this.#unsubmitted++;
    return this.#enqueue(async () => {
      let errors: Promise<void>;
      try {
        this.#check();
        await this.#ready;
        this.#stage?.checkLayer(options?.layer);
        const ctx = this.#ctx;
        // Piece by piece: each piece is submitted as soon as its inputs are written (when they
        // were not written at the call), so the GPU works on piece i while the host copies
        // piece i + 1 in, and piece i is copied out while later pieces run.
        [, errors] = ctx.scoped("run()", () => {
          const groups = this.#pieces.map((ps) => this.#uploadGroups(ps));
          const due = this.#nextDue();
          const zero = this.#pieces.map(() => ({ q: 0, k: 0, v: 0, out: 0 }));
          for (let i = 0; i < this.#pieces.length; i++) {
            if (copies) this.#writePiece(i, copies[0], copies[1], copies[2]);
            this.#submit(groups, zero, true, undefined, { piece: i, due });
          }
        });
      } finally {
        this.#unsubmitted--;
        // writeBuffer has copied them: free for the next run that has to wait.
        if (copies) this.#snapshots.give(copies);
      }
      if (written) await written;
      await errors;
      this.#hasRun = true;
      this.#stage?.done(this.#due, options?.layer);
      const out = this.spec.dtype === "f16"
        ? new Float16Array(q.length)
        : new Float32Array(q.length);
      const bytes = new Uint8Array(out.buffer);
      await mapEach(this.#reader, this.#pieces.map((ps) => ps.io!.read), (i, read) => {
        const { piece: p } = this.#pieces[i];
        const piece = new Uint8Array(read.getMappedRange(0, p.elems * this.#eb));
        // A split BSHD op reads back in BHSD order: scatter into the BSHD output.
        if (this.#bshdTooLarge) copyHeads(bytes, piece, this.spec, p, false);
        else bytes.set(piece, p.elemOffset * this.#eb);
      });
      return out;
    });
  }

  /** Writes q, k and v of every piece to the op's input buffers (made on first use). */
  #writeInputs(q: TensorArray, k: TensorArray, v: TensorArray): void {
    for (let i = 0; i < this.#pieces.length; i++) this.#writePiece(i, q, k, v);
  }

  /** Writes piece `i` of q, k and v to its input buffers. */
  #writePiece(i: number, q: TensorArray, k: TensorArray, v: TensorArray): void {
    const ps = this.#pieces[i];
    this.#uploadGroups(ps);
    writeUploads(this.#ctx.device.queue, ps.io!, ps.piece, {
      q,
      k,
      v,
      eb: this.#eb,
      heads: this.#staging,
    });
  }

  runBuffers(args: GpuRunArgs): Promise<void> {
    return this.#runBuffers(args);
  }

  /**
   * Runs on caller buffers like `runBuffers` and measures each stage on the GPU with timestamp
   * queries (one compute pass per stage instead of one per piece). Waits for the run and reads
   * the timestamps back, so it is for benchmarks, not the hot path; ordinary runs record no
   * query and pay nothing. Resolves `undefined` when the device lacks `timestamp-query`. Ticks
   * are taken as nanoseconds (WebGPU's unit; NVIDIA and llvmpipe count in ns).
   */
  profile(args: GpuRunArgs): Promise<StageTimes | undefined> {
    if (!this.#ctx.device.features.has("timestamp-query")) return Promise.resolve(undefined);
    let times: StageTimes | undefined;
    return this.#runBuffers(args, async (prof) => {
      await mapAll(this.#reader, [prof.read]);
      times = stageTimes(prof);
    }).then(() => times);
  }

  /**
   * The profiler's query set and buffers, sized for every pass of every piece: at most four
   * mask stages per mask group, then attention.
   */
  #makeProfiler(): Profiler {
    if (!this.#profiler) {
      const passes = this.#pieces.reduce(
        (n, ps) => n + (STAGES.length - 1) * (ps.draft?.groups.length ?? 0) + 1,
        0,
      );
      this.#profiler = makeProfiler(
        this.#ctx,
        passes,
        (label, size, usage) => this.#ioBuffer(label, size, usage),
      );
    }
    this.#profiler.stages = [];
    return this.#profiler;
  }

  /**
   * Records and submits a run on caller buffers. The op's queue of calls moves on as soon as the
   * run is submitted, not when WebGPU has checked it: the next run's recording overlaps this
   * run's GPU time, and the GPU queue keeps the runs (and their shared scratch) in order. The
   * returned promise still settles with this run's own errors. A profiled run (`after`) holds
   * the queue until its timestamps are read.
   */
  #runBuffers(args: GpuRunArgs, after?: (prof: Profiler) => Promise<void>): Promise<void> {
    try {
      this.#check();
      if (this.#bshdTooLarge) throw this.#bshdTooLarge;
      checkBuffers(this.spec, args);
    } catch (e) {
      return Promise.reject(e);
    }
    const submitted = this.#enqueue(async () => {
      this.#check();
      await this.#ready;
      this.#stage?.checkLayer(args.layer);
      const ctx = this.#ctx;
      let prof: Profiler | undefined;
      const [, errors] = ctx.scoped("run({ q, k, v, out })", () => {
        const slices = this.#pieces.map((ps) => {
          const s = {} as Record<TensorName, Slice>;
          for (const t of TENSORS) s[t] = slice(this.#ctx, args[t], ps.piece, this.#eb);
          return s;
        });
        const groups = this.#pieces.map((ps, i) =>
          this.#ioGroups(ps, {
            q: slices[i].q.binding,
            k: slices[i].k.binding,
            v: slices[i].v.binding,
            out: slices[i].out.binding,
          })
        );
        const bases = slices.map((s) => ({
          q: s.q.base4,
          k: s.k.base4,
          v: s.v.base4,
          out: s.out.base4,
        }));
        prof = after ? this.#makeProfiler() : undefined;
        this.#submit(groups, bases, false, prof);
      });
      // The mask schedule (maskEvery) advances with the recording, as the next run's is next.
      this.#hasRun = true;
      this.#stage?.done(this.#due, args.layer);
      const checked = this.#checked(args, errors);
      checked.catch(() => {}); // handled by the caller's promise below; never unhandled here
      if (after && prof) {
        await checked;
        await after(prof);
      }
      // Wrapped, so that the queue does not wait for the check (a returned promise would be
      // adopted).
      return { checked };
    });
    return submitted.then(({ checked }) => checked);
  }

  /** Settles with a submitted run's errors (the buffer at fault where WebGPU rejected one). */
  async #checked(args: GpuRunArgs, errors: Promise<void>): Promise<void> {
    try {
      await errors;
    } catch (e) {
      throw await diagnose(
        {
          ctx: this.#ctx,
          flash: this.#flash,
          params: this.#pieces[0].flashParams,
          dummy: this.#dummy,
        },
        args,
        e,
      );
    }
    this.#ctx.assertAlive();
  }

  lastMask(): Promise<MaskResult> {
    if (this.#disposed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "op", "used after dispose()"));
    }
    const plan = this.plan;
    if (!plan) {
      return Promise.reject(
        new DraftAttentionError("UNSUPPORTED", "op", "dense attention has no mask"),
      );
    }
    return this.#enqueue(async () => {
      this.#check();
      const { g, tiles } = plan;
      const { batch, heads } = this.spec;
      const mask = new Uint8Array(batch * heads * g * g);
      if (!this.#hasRun) return { g, mask, density: 0 };
      const ctx = this.#ctx;
      const [, errors] = ctx.scoped("lastMask()", () => {
        const U = GPUBufferUsage;
        const enc = ctx.device.createCommandEncoder({ label: "lastMask" });
        for (const ps of this.#pieces) {
          const d = ps.draft!;
          d.maskRead ??= {
            counts: this.#ioBuffer("counts read", d.counts.size, U.MAP_READ | U.COPY_DST),
            lists: this.#ioBuffer("lists read", d.lists.size, U.MAP_READ | U.COPY_DST),
          };
          enc.copyBufferToBuffer(d.counts, 0, d.maskRead.counts, 0, d.counts.size);
          enc.copyBufferToBuffer(d.lists, 0, d.maskRead.lists, 0, d.lists.size);
        }
        ctx.device.queue.submit([enc.finish()]);
      });
      await errors;
      const reads = this.#pieces.flatMap((
        ps,
      ) => [ps.draft!.maskRead!.counts, ps.draft!.maskRead!.lists]);
      await mapAll(this.#reader, reads);
      let kept = 0;
      for (const ps of this.#pieces) {
        const r = ps.draft!.maskRead!;
        const counts = new Uint32Array(r.counts.getMappedRange());
        const lists = new Uint32Array(r.lists.getMappedRange());
        for (let x = 0; x < ps.piece.nbh; x++) {
          const bh = ps.piece.bh0 + x;
          for (let i = 0; i < g; i++) {
            const row = (x * tiles + i) * tiles;
            const n = Math.min(counts[x * tiles + i], tiles);
            for (let e = 0; e < n; e++) {
              const j = lists[row + e];
              if (j < g) {
                mask[(bh * g + i) * g + j] = 1;
                kept++;
              }
            }
          }
        }
        r.counts.unmap();
        r.lists.unmap();
      }
      return { g, mask, density: kept / mask.length };
    });
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#profiler?.set.destroy();
    this.#snapshots.clear();
    for (const b of this.#owned) b.destroy();
    this.#owned.length = 0;
    this.#extraBytes = 0;
    this.#onDispose(this);
  }

  // ------------------------------------------------------------------------------------------
  // Internals
  // ------------------------------------------------------------------------------------------

  #check(): void {
    if (this.#disposed) throw new DraftAttentionError("DISPOSED", "op", "used after dispose()");
    this.#ctx.assertAlive();
  }

  /** Runs `fn` after every earlier call of this op has settled. */
  #enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => {});
    return run;
  }

  /** Upload buffers of run(q, k, v) for a piece, and their bind groups (made once). */
  #uploadGroups(ps: PieceState): IoGroups {
    const bytes = ps.piece.elems * this.#eb;
    if (!ps.io) {
      ps.io = makeUploads(bytes, (label, size, usage) => this.#ioBuffer(label, size, usage));
      ps.ioGroups = this.#ioGroups(ps, {
        q: { buffer: ps.io.q, size: bytes },
        k: { buffer: ps.io.k, size: bytes },
        v: { buffer: ps.io.v, size: bytes },
        out: { buffer: ps.io.out, size: bytes },
      });
    }
    return ps.ioGroups!;
  }

  #ioGroups(ps: PieceState, t: Record<TensorName, GPUBufferBinding>): IoGroups {
    const d = ps.draft;
    const groups: IoGroups = {
      flash: this.#flash.bind({
        params: ps.flashParams,
        q: t.q,
        k: t.k,
        v: t.v,
        out: t.out,
        table: this.#table,
        counts: d?.counts ?? this.#dummy,
        lists: d?.lists ?? this.#dummy,
      }),
    };
    if (d) groups.mask = this.#stage!.bindIo(d, { q: t.q, k: t.k });
    return groups;
  }

  /**
   * Writes the per-run params, records every pass of every piece, submits once. One compute
   * pass per piece; with `prof`, one per stage instead, each with timestamp writes.
   */
  #submit(
    groups: IoGroups[],
    bases: Record<TensorName, number>[],
    readback: boolean,
    prof?: Profiler,
    one?: { piece: number; due: boolean },
  ): void {
    const ctx = this.#ctx;
    const queue = ctx.device.queue;
    const spec = this.spec;
    const { sB, sT, sH } = this.#strides;
    const plan = this.plan;
    const enc = ctx.device.createCommandEncoder({ label: "draftattn run" });
    const stage = this.#stage;
    // maskEvery: a run that reuses the mask records no pass before flash attention.
    const due = one ? one.due : this.#nextDue();
    this.#pieces.forEach((ps, i) => {
      if (one && i !== one.piece) return;
      const { nbh, headsPerRow } = ps.piece;
      const base = bases[i];
      queue.writeBuffer(
        ps.flashParams,
        0,
        packParams(FLASH_PARAMS, {
          items: this.#itemCount,
          nbh,
          heads_per_row: headsPerRow,
          tokens: spec.tokens,
          s_b: sB / 4,
          s_t: sT / 4,
          s_h: sH / 4,
          base_q: base.q,
          base_k: base.k,
          base_v: base.v,
          base_o: base.out,
          tiles: plan?.tiles ?? 0,
          dense: plan ? 0 : 1,
          scale_log2: spec.scale * Math.LOG2E,
          tiles_at: this.#tilesAt,
          items_at: this.#itemsAt,
          lead: this.#leadItems,
        }),
      );
      const d = due ? ps.draft : undefined;
      if (d && plan) {
        const pool = {
          heads_per_row: headsPerRow,
          g: plan.g,
          s_b: sB / 4,
          s_t: sT / 4,
          s_h: sH / 4,
        };
        stage!.writeRun(enc, d, pool, base);
      }
      // The pass of a stage: the piece's one pass, or (profiling) a timed pass per stage.
      let open: GPUComputePassEncoder | undefined;
      let openStage: Stage | undefined;
      const pass = (s: Stage): GPUComputePassEncoder => {
        if (!prof) return open ??= enc.beginComputePass({ label: "draftattn" });
        if (openStage !== s || !open) {
          open?.end();
          openStage = s;
          open = beginTimedPass(enc, prof, s);
        }
        return open;
      };
      if (d && plan) stage!.record(pass, d, groups[i].mask!);
      this.#flash.dispatch(pass("attention"), groups[i].flash, this.#itemCount * nbh);
      open!.end();
      if (readback) {
        const io = ps.io!;
        enc.copyBufferToBuffer(io.out, 0, io.read, 0, ps.piece.elems * this.#eb);
      }
    });
    if (prof) resolveTimestamps(enc, prof);
    queue.submit([enc.finish()]);
  }

  /** Whether this run computes the mask (advances the mask schedule: once per run). */
  #nextDue(): boolean {
    return this.#due = this.#stage?.due() ?? false;
  }
}
