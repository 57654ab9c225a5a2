/**
 * One WebGPU attention op (dense, or draft when built with a plan). Pipelines and persistent
 * buffers (token order, tile table, work items, draft scratch, block lists) are made once, at
 * creation; a run uploads, records every pass of every piece in one command buffer
 * (pool -> draft map -> radix select -> block lists -> flash attention), submits once and reads
 * back only the output. Runs of one op are serialised (they share scratch and readback buffers).
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
  TensorArray,
} from "../types.ts";
import type { GpuContext } from "./context.ts";
import { type Kernel, packParams, paramsBytes } from "./kernel.ts";
import {
  FLASH_PARAMS,
  flashKernel,
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
import { type Piece, splitPieces, type Strides, strides } from "./pieces.ts";
import { GpuMaskStage, type StagePiece } from "./policy.ts";
import { type FlashConfig, flashConfig, type FlashVariant, pickFlashVariant } from "./variants.ts";

const TENSORS = ["q", "k", "v", "out"] as const;
type TensorName = typeof TENSORS[number];

/** Radix-select digit positions, most significant first. */
const SHIFTS = [24, 16, 8, 0] as const;

/** A tensor range bound for one piece, and the vec4 offset of the piece inside it. */
interface Slice {
  binding: GPUBufferBinding;
  base4: number;
}

/** Draft-only buffers and bind groups of one piece. */
interface DraftPiece {
  qd: GPUBuffer;
  kd: GPUBuffer;
  p: GPUBuffer;
  hist: GPUBuffer;
  state: GPUBuffer;
  counts: GPUBuffer;
  lists: GPUBuffer;
  mapGroup: GPUBindGroup;
  histGroups: GPUBindGroup[];
  pickGroups: GPUBindGroup[];
  listsGroup: GPUBindGroup;
  poolQParams: GPUBuffer;
  poolKParams: GPUBuffer;
  /** Policies and estimators beyond the reference (src/webgpu/policy.ts). */
  stage: StagePiece;
  /** Readback of counts and lists for lastMask(), made on first use. */
  maskRead?: { counts: GPUBuffer; lists: GPUBuffer };
}

interface PieceState {
  piece: Piece;
  flashParams: GPUBuffer;
  draft?: DraftPiece;
  /** Upload/readback buffers of run(q, k, v), made on first use. */
  io?: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer; read: GPUBuffer };
  /** Bind groups over `io`. */
  ioGroups?: IoGroups;
}

/** Bind groups that depend on where q/k/v/out live. */
interface IoGroups {
  flash: GPUBindGroup;
  poolQ?: GPUBindGroup;
  poolK?: GPUBindGroup;
  sampled?: GPUBindGroup;
}

/** Stages of a run, in recording order (see {@linkcode StageTimes}). */
export const STAGES = ["pool", "map", "select", "lists", "attention"] as const;
/** One stage of a run. */
export type Stage = typeof STAGES[number];

/**
 * GPU time of each stage of one run in milliseconds, from `timestamp-query` (summed over
 * pieces; 0 for a stage the run did not record): `pool` the window means of Q and K, `map` the
 * draft map (or the sampled estimator), `select` the radix select (or a row policy, lists
 * included), `lists` the block lists, `attention` flash attention.
 */
export type StageTimes = Record<Stage, number>;

/** Timestamp queries of a profiled run: two per recorded pass. */
interface Profiler {
  set: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
  /** The stage of each recorded pass. */
  stages: Stage[];
}

/** A dense or draft attention op on one GPU device. */
export class WebGpuOp implements DraftKernelOp {
  readonly spec: DenseSpec | DraftSpec;
  readonly plan: Plan | undefined;
  readonly config: FlashConfig;
  readonly #ctx: GpuContext;
  readonly #eb: number;
  readonly #strides: Strides;
  readonly #pieces: PieceState[] = [];
  readonly #owned: GPUBuffer[] = [];
  #flash!: Kernel;
  #pool?: Kernel;
  #map?: Kernel;
  #hist?: Kernel;
  #pick?: Kernel;
  #lists?: Kernel;
  /** Policy, estimator and mask reuse of a draft op. */
  #stage?: GpuMaskStage;
  /** Whether the run being recorded computes the mask (else it reuses the block lists). */
  #due = false;
  #order!: GPUBuffer;
  #tiles!: GPUBuffer;
  /** order, tile table and work items of the flash kernel, concatenated (u32). */
  #table!: GPUBuffer;
  #tilesAt = 0;
  #itemsAt = 0;
  #itemCount!: number;
  #invLen?: GPUBuffer;
  #dummy!: GPUBuffer;
  readonly #ready: Promise<void>;
  readonly #onDispose: (op: WebGpuOp) => void;
  #tail: Promise<unknown> = Promise.resolve();
  #disposed = false;
  #hasRun = false;
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
    this.spec = spec;
    this.plan = plan;
    this.#onDispose = onDispose;
    this.#eb = spec.dtype === "f16" ? 2 : 4;
    this.#strides = strides(spec);
    const shaderF16 = ctx.device.features.has("shader-f16");
    const subgroupSize = ctx.subgroupSize;
    this.config = variant
      ? flashConfig(variant, spec.headDim, spec.dtype === "f16" && shaderF16, subgroupSize)
      : pickFlashVariant(spec.headDim, ctx.limits, {
        dtype: spec.dtype,
        shaderF16,
        subgroupSize,
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
    const pieces = splitPieces(spec, {
      maxBytes: Math.min(lim.maxStorageBufferBindingSize, lim.maxBufferSize) - slack,
      perPairBytes: plan ? Math.max(g * spec.headDim * 4, g * g * 4, tiles * tiles * 4) : 0,
    });

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
    this.#flash = flashKernel(ctx, this.config, spec.dtype);
    this.#dummy = this.#buffer("dummy", 16, STORE);
    let items: Uint32Array;
    if (plan) {
      items = new Uint32Array(workItems(plan, this.config.br).buffer);
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
      this.#pool = poolKernel(ctx, D, spec.dtype);
      this.#map = mapKernel(ctx, D);
      this.#hist = histKernel(ctx);
      this.#pick = pickKernel(ctx);
      this.#lists = listsKernel(ctx);
      this.#stage = new GpuMaskStage(
        ctx,
        spec as DraftSpec,
        plan,
        (label, size, usage, data) => this.#buffer(label, size, usage, data),
      );
    } else {
      // Dense: queries in runs of BR rows; order, tiles and lists are not read.
      const n = Math.ceil(spec.tokens / this.config.br);
      items = new Uint32Array(3 * n);
      for (let i = 0; i < n; i++) {
        items[3 * i + 1] = i * this.config.br;
        items[3 * i + 2] = Math.min(this.config.br, spec.tokens - i * this.config.br);
      }
      this.#order = this.#dummy;
      this.#tiles = this.#dummy;
    }
    this.#itemCount = items.length / 3;
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
      if (plan) state.draft = this.#draftPiece(piece, plan);
      this.#pieces.push(state);
    }
  }

  #buffer(
    label: string,
    size: number,
    usage: GPUBufferUsageFlags,
    data?: ArrayBufferView,
  ): GPUBuffer {
    const b = this.#ctx.buffer(label, size, usage, data);
    this.#owned.push(b);
    return b;
  }

  #uniform(layout: typeof FLASH_PARAMS, values: Record<string, number>): GPUBuffer {
    const bytes = packParams(layout, values);
    return this.#buffer(
      "params",
      bytes.byteLength,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      new Uint8Array(bytes),
    );
  }

  #draftPiece(piece: Piece, plan: Plan): DraftPiece {
    const U = GPUBufferUsage;
    const STORE = U.STORAGE | U.COPY_DST | U.COPY_SRC;
    const spec = this.spec as DraftSpec;
    const { g, tiles } = plan;
    const nbh = piece.nbh;
    const D = spec.headDim;
    const qd = this.#buffer("qd", nbh * g * D * 4, STORE);
    const kd = this.#buffer("kd", nbh * g * D * 4, STORE);
    const p = this.#buffer("p", nbh * g * g * 4, STORE);
    const hist = this.#buffer("hist", nbh * 256 * 4, STORE);
    const state = this.#buffer("state", nbh * 8, STORE);
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
    const chunks = Math.ceil((g * g) / HIST_CHUNK);
    const mapParams = this.#uniform(MAP_PARAMS, {
      nbh,
      g,
      row_blocks: Math.ceil(g / MAP_ROWS),
      scale: spec.scale,
    });
    const listsParams = this.#uniform(LISTS_PARAMS, { nbh, g, tiles });
    return {
      qd,
      kd,
      p,
      hist,
      state,
      counts,
      lists,
      mapGroup: this.#map!.bind({ params: mapParams, qd, kd, p }),
      histGroups: SHIFTS.map((shift) =>
        this.#hist!.bind({
          params: this.#uniform(HIST_PARAMS, { nbh, n: g * g, chunks, shift }),
          p,
          state,
          hist,
        })
      ),
      pickGroups: SHIFTS.map((shift) =>
        this.#pick!.bind({
          params: this.#uniform(PICK_PARAMS, { nbh, shift, keep: spec.keep }),
          hist,
          state,
        })
      ),
      listsGroup: this.#lists!.bind({ params: listsParams, p, state, counts, lists }),
      poolQParams: this.#buffer("pool params", paramsBytes(POOL_PARAMS), U.UNIFORM | U.COPY_DST),
      poolKParams: this.#buffer("pool params", paramsBytes(POOL_PARAMS), U.UNIFORM | U.COPY_DST),
      stage: this.#stage!.piece(nbh, { p, counts, lists }),
    };
  }

  /** Pieces the op is split into (one unless a tensor exceeds a binding). */
  get pieceCount(): number {
    return this.#pieces.length;
  }

  // ------------------------------------------------------------------------------------------
  // Public API
  // ------------------------------------------------------------------------------------------

  run(q: TensorArray, k: TensorArray, v: TensorArray): Promise<TensorArray> {
    return this.#enqueue(async () => {
      this.#check();
      await this.#ready;
      const ctx = this.#ctx;
      const [, errors] = ctx.scoped("run()", () => {
        const groups = this.#pieces.map((ps) => this.#uploadGroups(ps));
        const queue = ctx.device.queue;
        for (const ps of this.#pieces) {
          const { elemOffset, elems } = ps.piece;
          const io = ps.io!;
          for (const [buf, src] of [[io.q, q], [io.k, k], [io.v, v]] as const) {
            const bytes = new Uint8Array(
              src.buffer,
              src.byteOffset + elemOffset * this.#eb,
              elems * this.#eb,
            ) as Uint8Array<ArrayBuffer>;
            queue.writeBuffer(buf, 0, bytes);
          }
        }
        const zero = { q: 0, k: 0, v: 0, out: 0 };
        this.#submit(groups, this.#pieces.map(() => zero), true);
      });
      await errors;
      this.#hasRun = true;
      this.#stage?.done(this.#due);
      const reads = this.#pieces.map((ps) => ps.io!.read);
      await this.#mapAll(reads);
      const out = this.spec.dtype === "f16"
        ? new Float16Array(q.length)
        : new Float32Array(q.length);
      const bytes = new Uint8Array(out.buffer);
      this.#pieces.forEach((ps, i) => {
        const { elemOffset, elems } = ps.piece;
        bytes.set(
          new Uint8Array(reads[i].getMappedRange(0, elems * this.#eb)),
          elemOffset * this.#eb,
        );
        reads[i].unmap();
      });
      return out;
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
      await this.#mapAll([prof.read]);
      const ticks = new BigInt64Array(prof.read.getMappedRange(0, prof.stages.length * 16));
      times = { pool: 0, map: 0, select: 0, lists: 0, attention: 0 };
      prof.stages.forEach((stage, i) => {
        times![stage] += Math.max(0, Number(ticks[2 * i + 1] - ticks[2 * i])) / 1e6;
      });
      prof.read.unmap();
    }).then(() => times);
  }

  /** The profiler's query set and buffers, sized for every pass of every piece. */
  #makeProfiler(): Profiler {
    if (!this.#profiler) {
      const count = 2 * STAGES.length * this.#pieces.length;
      const U = GPUBufferUsage;
      const set = this.#ctx.device.createQuerySet({ type: "timestamp", count });
      this.#profiler = {
        set,
        resolve: this.#buffer("timestamps", count * 8, U.QUERY_RESOLVE | U.COPY_SRC),
        read: this.#buffer("timestamps read", count * 8, U.MAP_READ | U.COPY_DST),
        stages: [],
      };
    }
    this.#profiler.stages = [];
    return this.#profiler;
  }

  #runBuffers(args: GpuRunArgs, after?: (prof: Profiler) => Promise<void>): Promise<void> {
    try {
      this.#check();
      this.#checkBuffers(args);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(async () => {
      this.#check();
      await this.#ready;
      const ctx = this.#ctx;
      let prof: Profiler | undefined;
      const [, errors] = ctx.scoped("run({ q, k, v, out })", () => {
        const slices = this.#pieces.map((ps) => {
          const s = {} as Record<TensorName, Slice>;
          for (const t of TENSORS) s[t] = this.#slice(args[t], ps.piece);
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
      try {
        await errors;
      } catch (e) {
        throw await this.#diagnose(args, e);
      }
      this.#ctx.assertAlive();
      this.#hasRun = true;
      this.#stage?.done(this.#due);
      if (after && prof) await after(prof);
    });
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
            counts: this.#buffer("counts read", d.counts.size, U.MAP_READ | U.COPY_DST),
            lists: this.#buffer("lists read", d.lists.size, U.MAP_READ | U.COPY_DST),
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
      await this.#mapAll(reads);
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
    for (const b of this.#owned) b.destroy();
    this.#owned.length = 0;
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

  async #mapAll(buffers: GPUBuffer[]): Promise<void> {
    try {
      await Promise.all(buffers.map((b) => b.mapAsync(GPUMapMode.READ)));
      // A destroyed device may still resolve maps; its loss is known by now.
      if (this.#ctx.lost) throw this.#ctx.lostError();
    } catch (e) {
      for (const b of buffers) {
        try {
          if (b.mapState === "mapped") b.unmap();
        } catch {
          // A buffer of a lost device may refuse to unmap; it is destroyed with the op.
        }
      }
      if (this.#disposed) throw new DraftAttentionError("DISPOSED", "op", "disposed during a run");
      throw await this.#ctx.failure("reading back", e);
    }
  }

  /** Upload buffers of run(q, k, v) for a piece, and their bind groups (made once). */
  #uploadGroups(ps: PieceState): IoGroups {
    const U = GPUBufferUsage;
    const bytes = ps.piece.elems * this.#eb;
    if (!ps.io) {
      ps.io = {
        q: this.#buffer("q", bytes, U.STORAGE | U.COPY_DST),
        k: this.#buffer("k", bytes, U.STORAGE | U.COPY_DST),
        v: this.#buffer("v", bytes, U.STORAGE | U.COPY_DST),
        out: this.#buffer("out", bytes, U.STORAGE | U.COPY_SRC),
        read: this.#buffer("out read", bytes, U.MAP_READ | U.COPY_DST),
      };
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
    if (d) {
      const common = { order: this.#order, tiles: this.#tiles, inv_len: this.#invLen! };
      groups.poolQ = this.#pool!.bind({ params: d.poolQParams, x: t.q, ...common, pooled: d.qd });
      groups.poolK = this.#pool!.bind({ params: d.poolKParams, x: t.k, ...common, pooled: d.kd });
      groups.sampled = this.#stage!.ioGroup(d.stage, {
        q: t.q,
        k: t.k,
        order: this.#order,
        tiles: this.#tiles,
      });
    }
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
  ): void {
    const ctx = this.#ctx;
    const queue = ctx.device.queue;
    const spec = this.spec;
    const { sB, sT, sH } = this.#strides;
    const plan = this.plan;
    const enc = ctx.device.createCommandEncoder({ label: "draftattn run" });
    const stage = this.#stage;
    // maskEvery: a run that reuses the mask records no pass before flash attention.
    const due = this.#due = stage?.due() ?? false;
    this.#pieces.forEach((ps, i) => {
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
        }),
      );
      const d = due ? ps.draft : undefined;
      if (d && plan) {
        const pool = {
          nbh,
          heads_per_row: headsPerRow,
          g: plan.g,
          s_b: sB / 4,
          s_t: sT / 4,
          s_h: sH / 4,
        };
        queue.writeBuffer(d.poolQParams, 0, packParams(POOL_PARAMS, { ...pool, base: base.q }));
        queue.writeBuffer(d.poolKParams, 0, packParams(POOL_PARAMS, { ...pool, base: base.k }));
        stage!.writeParams(d.stage, { ...pool, base_q: base.q, base_k: base.k });
        if (stage!.usesPercentile) enc.clearBuffer(d.hist);
      }
      // The pass of a stage: the piece's one pass, or (profiling) a timed pass per stage.
      let open: GPUComputePassEncoder | undefined;
      let openStage: Stage | undefined;
      const pass = (s: Stage): GPUComputePassEncoder => {
        if (!prof) return open ??= enc.beginComputePass({ label: "draftattn" });
        if (openStage !== s || !open) {
          open?.end();
          const at = 2 * prof.stages.length;
          prof.stages.push(s);
          openStage = s;
          open = enc.beginComputePass({
            label: `draftattn ${s}`,
            timestampWrites: {
              querySet: prof.set,
              beginningOfPassWriteIndex: at,
              endOfPassWriteIndex: at + 1,
            },
          });
        }
        return open;
      };
      if (d && plan) {
        const g = plan.g;
        if (stage!.usesDraftMap) {
          const poolGroups = Math.ceil((nbh * g * (spec.headDim / 4)) / POOL_WG);
          this.#pool!.dispatch(pass("pool"), groups[i].poolQ!, poolGroups);
          this.#pool!.dispatch(pass("pool"), groups[i].poolK!, poolGroups);
          this.#map!.dispatch(pass("map"), d.mapGroup, nbh * Math.ceil(g / MAP_ROWS));
        }
        if (groups[i].sampled) stage!.dispatchEstimate(pass("map"), groups[i].sampled, nbh);
        if (stage!.usesPercentile) {
          const chunks = Math.ceil((g * g) / HIST_CHUNK);
          for (let s = 0; s < SHIFTS.length; s++) {
            this.#hist!.dispatch(pass("select"), d.histGroups[s], nbh * chunks);
            this.#pick!.dispatch(pass("select"), d.pickGroups[s], nbh);
          }
          this.#lists!.dispatch(pass("lists"), d.listsGroup, nbh * g);
        } else {
          stage!.dispatchSelect(pass("select"), d.stage);
        }
      }
      this.#flash.dispatch(pass("attention"), groups[i].flash, this.#itemCount * nbh);
      open!.end();
      if (readback) {
        const io = ps.io!;
        enc.copyBufferToBuffer(io.out, 0, io.read, 0, ps.piece.elems * this.#eb);
      }
    });
    if (prof && prof.stages.length) {
      const n = 2 * prof.stages.length;
      enc.resolveQuerySet(prof.set, 0, n, prof.resolve, 0);
      enc.copyBufferToBuffer(prof.resolve, 0, prof.read, 0, n * 8);
    }
    queue.submit([enc.finish()]);
  }

  /** The bound range of a caller's buffer for one piece (offset aligned down, base in vec4). */
  #slice(buffer: GPUBuffer, piece: Piece): Slice {
    const align = this.#ctx.limits.minStorageBufferOffsetAlignment;
    const start = piece.elemOffset * this.#eb;
    const offset = Math.floor(start / align) * align;
    const end = (piece.elemOffset + piece.elems) * this.#eb;
    return {
      binding: { buffer, offset, size: end - offset },
      base4: (start - offset) / (4 * this.#eb),
    };
  }

  /** Synchronous checks of caller buffers: size, usage, map state, aliasing. */
  #checkBuffers(args: GpuRunArgs): void {
    const spec = this.spec;
    const bytes = spec.batch * spec.tokens * spec.heads * spec.headDim * this.#eb;
    const shape = spec.layout === "BSHD"
      ? `[${spec.batch}, ${spec.tokens}, ${spec.heads}, ${spec.headDim}]`
      : `[${spec.batch}, ${spec.heads}, ${spec.tokens}, ${spec.headDim}]`;
    for (const t of TENSORS) {
      const b = args[t];
      if (b.size < bytes) {
        throw new DraftAttentionError(
          "INVALID_BUFFER",
          t,
          `holds ${b.size} bytes; ${spec.layout} ${shape} ${spec.dtype} needs ${bytes}`,
        );
      }
      if (!(b.usage & GPUBufferUsage.STORAGE)) {
        throw new DraftAttentionError(
          "INVALID_BUFFER",
          t,
          `lacks GPUBufferUsage.STORAGE (usage flags ${b.usage})`,
        );
      }
      if (b.mapState !== "unmapped") {
        throw new DraftAttentionError(
          "INVALID_BUFFER",
          t,
          `is ${b.mapState === "mapped" ? "mapped" : "being mapped"}; unmap it before a run`,
        );
      }
    }
    for (const t of ["q", "k", "v"] as const) {
      if (args.out === args[t]) {
        throw new DraftAttentionError(
          "INVALID_BUFFER",
          "out",
          `is the same GPUBuffer as ${t}; the output needs its own buffer`,
        );
      }
    }
  }

  /**
   * After a failed run on caller buffers: finds the buffer WebGPU rejects (destroyed, or from
   * another device) by binding each alone; `INVALID_BUFFER` for it, else the original error.
   */
  async #diagnose(args: GpuRunArgs, error: unknown): Promise<unknown> {
    if (this.#ctx.lost || !(error instanceof DraftAttentionError) || error.code !== "GPU_ERROR") {
      return error;
    }
    const ctx = this.#ctx;
    for (const t of TENSORS) {
      const [, errors] = ctx.scoped(`checking ${t}`, () => {
        const enc = ctx.device.createCommandEncoder({ label: `check ${t}` });
        const pass = enc.beginComputePass();
        const size = Math.min(16, Math.floor(args[t].size / 4) * 4);
        pass.setBindGroup(
          0,
          this.#flash.bind({ ...this.#probeBindings(), [t]: { buffer: args[t], size } }),
        );
        pass.end();
        ctx.device.queue.submit([enc.finish()]);
      });
      try {
        await errors;
      } catch (e) {
        return new DraftAttentionError(
          "INVALID_BUFFER",
          t,
          `was rejected by WebGPU (destroyed, or created on another device): ${
            e instanceof Error ? e.message : String(e)
          }`,
          { cause: e },
        );
      }
    }
    return error;
  }

  #probeBindings(): Record<string, GPUBuffer> {
    const d = this.#dummy;
    return {
      params: this.#pieces[0].flashParams,
      q: d,
      k: d,
      v: d,
      out: d,
      table: d,
      counts: d,
      lists: d,
    };
  }
}
