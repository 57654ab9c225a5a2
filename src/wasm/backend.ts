/**
 * The WebAssembly backend: draft attention and dense attention in AssemblyScript with SIMD
 * (asm/attention.ts), on the calling thread and, for runs big enough to share, on worker
 * threads over one shared memory (src/wasm/pool.ts).
 *
 * Per batch element, q, k, v are copied into wasm memory as f32 (f16 converted on the way).
 * A run then goes through phases of independent work items, for a group of heads ("slots") at
 * a time:
 * 1. PREP, one item per (head, range of tiles): gather the rows into window order, pack the
 *    keys, pool the video tiles (asm `prepTiles`).
 * 2. DRAFT (draft attention), one item per head: the draft map (asm `draftMap`); then the
 *    calling thread selects the mask and builds the block lists (asm/plan.ts).
 * 3. FLASH, one item per (head, query block of <= 128 rows of a tile): block-sparse flash
 *    attention (asm `flashBlock`), which writes the output rows back in raster order.
 * Every item computes exactly what the one-thread loop computes, so the output does not depend
 * on the number of threads (the tests hold it bit-identical).
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import { densePlan } from "../plan.ts";
import type {
  Backend,
  BackendInfo,
  DenseSpec,
  DraftKernelOp,
  DraftSpec,
  KernelOp,
  MaskResult,
  Plan,
  RunOptions,
  TensorArray,
} from "../types.ts";
import {
  type AsmBuild,
  AsmInstance,
  asmModule,
  type AsmSimd,
  asmSimd,
  sharedMemory,
} from "../_asm.ts";
import {
  DRAFT,
  FLASH,
  type Job,
  phaseInline,
  PREP,
  SAMPLED,
  threadsAvailable,
  WorkerPool,
} from "./pool.ts";
import { WasmMaskStage } from "./mask.ts";
import { Snapshots } from "../_snapshot.ts";

/** Options of {@linkcode createWasmBackend} beyond the contract (tests use `build`). */
export interface WasmBackendOptions {
  /**
   * `"debug"` runs the build with assertions on (on the calling thread only: `threads` is then
   * 1); default `"release"`.
   */
  build?: Exclude<AsmBuild, "threads">;
  /**
   * Bytes of wasm memory a run may use (default: 4 GiB less 1 MiB). Past it a run stages one
   * head at a time, and past that it rejects with TOO_LARGE. Tests lower it.
   */
  memoryLimit?: number;
  /**
   * Threads per run, the calling thread included (validated by the runtime: an integer >= 1).
   * Default: `navigator.hardwareConcurrency`. 1 runs everything on the calling thread; more
   * needs module workers and shared WebAssembly memory, and falls back to 1 without them.
   */
  threads?: number;
  /**
   * Runs estimated below this many FLOPs stay on the calling thread, where messaging the
   * workers would cost more than it saves (default 2^25, about a millisecond). Tests set 0.
   */
  minParallelFlops?: number;
  /** Milliseconds an idle worker pool lives before it is terminated (default 2000). */
  idleMs?: number;
}

/** Largest wasm32 memory. */
const WASM_MEMORY = 2 ** 32;
/** Room kept for the module's static data and alignment padding. */
const RESERVED = 1 << 20;
/** Query rows per FLASH item: at most QB of asm/attention.ts. */
const ROWS_PER_ITEM = 128;
/** Rows of window order per PREP item when the work is shared (at least). */
const ROWS_PER_CHUNK = 512;

/** The default thread count: every core. */
export function defaultThreads(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator
    ?.hardwareConcurrency;
  return typeof n === "number" && Number.isInteger(n) && n >= 1 ? n : 1;
}

/**
 * How q, k, v and out are staged in wasm memory: a whole batch element at a time (one copy per
 * tensor), or, when that does not fit, one head at a time (HunyuanVideo's 126,976 tokens x 24
 * heads x 128 dims are 1.6 GB per tensor and batch element, but 65 MB per head).
 */
type Staging = "batch" | "head";

/** A run's tables that depend only on the plan and the thread count. */
interface Work {
  /** PREP items of one head: tile ranges [t0, t1). */
  chunks: Int32Array;
  /** FLASH items of one head: (tile, row offset in the tile, rows) triples. */
  items: Int32Array;
}

function workOf(plan: Plan, threads: number): Work {
  const { tiles, tileLen, tokens } = plan;
  const target = threads === 1
    ? Infinity
    : Math.max(ROWS_PER_CHUNK, Math.ceil(tokens / (4 * threads)));
  const chunks: number[] = [];
  let t0 = 0;
  let rows = 0;
  for (let t = 0; t < tiles; t++) {
    rows += tileLen[t];
    if (rows >= target || t === tiles - 1) {
      chunks.push(t0, t + 1);
      t0 = t + 1;
      rows = 0;
    }
  }
  const items: number[] = [];
  for (let t = 0; t < tiles; t++) {
    for (let r = 0; r < tileLen[t]; r += ROWS_PER_ITEM) {
      items.push(t, r, Math.min(ROWS_PER_ITEM, tileLen[t] - r));
    }
  }
  return { chunks: Int32Array.from(chunks), items: Int32Array.from(items) };
}

/** Buffers allocated once per run, and those allocated once per slot. */
const PER_SLOT = [
  "qw",
  "kw",
  "vw",
  "kt",
  "qd",
  "kd",
  "kdT",
  "p",
  "mask",
  "count",
  "list",
] as const;

/** Byte sizes of the buffers one run allocates (per-slot ones for one slot), in order. */
function layout(
  asm: AsmInstance,
  spec: DenseSpec,
  plan: Plan,
  draft: boolean,
  staging: Staging,
  threads: number,
): Record<string, number> {
  const { tokens: n, headDim: d } = spec;
  const h = staging === "batch" ? spec.heads : 1;
  const { tiles, g } = plan;
  let packed = 0;
  for (let t = 0; t < tiles; t++) packed += Math.ceil(plan.tileLen[t] / 8) * 8 * d;
  const sizes: Record<string, number> = {
    q: n * h * d * 4,
    k: n * h * d * 4,
    v: n * h * d * 4,
    out: n * h * d * 4,
    order: n * 4,
    tileStart: tiles * 4,
    tileLen: tiles * 4,
    offsets: tiles * 4,
    scratch: threads * scratchBytes(asm, d),
    qw: n * d * 4,
    kw: n * d * 4,
    vw: n * d * 4,
    kt: packed * 4,
    // Dense: one shared list for every slot.
    count: tiles * 4,
    list: (draft ? tiles * tiles : tiles) * 4,
  };
  if (draft) {
    sizes.qd = g * d * 4;
    sizes.kd = g * d * 4;
    sizes.kdT = Math.ceil(g / 4) * 4 * d * 4;
    sizes.p = g * g * 4;
    sizes.mask = g * g;
  }
  return sizes;
}

const pad = (bytes: number) => Math.ceil(bytes / 64) * 64;

/**
 * One thread's flash scratch, rounded up to 256 bytes: threads never write the same cache line
 * (nor its prefetched neighbour), which they would do in every inner loop otherwise.
 */
function scratchBytes(asm: AsmInstance, headDim: number): number {
  return Math.ceil(asm.x.flashScratchBytes(headDim) / 256) * 256;
}

function totalBytes(sizes: Record<string, number>, slots: number, draft: boolean): number {
  let total = 0;
  for (const [name, s] of Object.entries(sizes)) {
    const perSlot = (PER_SLOT as readonly string[]).includes(name) &&
      (draft || (name !== "count" && name !== "list"));
    total += pad(s) * (perSlot ? slots : 1);
  }
  return total;
}

/**
 * A lower bound of {@linkcode allocate}'s total, from the sizes alone (no plan): one head staged,
 * one slot: q, k, v, out, the window-order copies qw, kw, vw and the packed keys (at least
 * `tokens * headDim` f32 each), the token order and, for a draft op, the draft map, the mask
 * and the block lists. 2^27 tokens at headDim 4 need 16.5 GiB: refused before planning.
 */
export function leastRunBytes(spec: DenseSpec, g: number, tiles: number): number {
  const { tokens: n, headDim: d } = spec;
  return 8 * n * d * 4 + n * 4 + (g > 0 ? 3 * g * d * 4 + g * g * 5 + tiles * tiles * 4 : 0);
}

interface Allocation {
  staging: Staging;
  slots: number;
  /** Pointer of each buffer (of slot 0 for per-slot buffers). */
  ptrs: Record<string, number>;
  /** Bytes from one slot of a per-slot buffer to the next (0: shared). */
  strides: Record<string, number>;
}

/**
 * Picks the staging and the slots (heads computed together: every head when the run is shared
 * between threads and memory allows, else one) and allocates every buffer of a run, or throws
 * TOO_LARGE before allocating anything.
 */
function allocate(
  asm: AsmInstance,
  spec: DenseSpec,
  plan: Plan,
  draft: boolean,
  limit: number,
  threads: number,
): Allocation {
  let staging: Staging = "batch";
  let slots = threads > 1 ? spec.heads : 1;
  let sizes = layout(asm, spec, plan, draft, staging, threads);
  while (slots > 1 && totalBytes(sizes, slots, draft) > limit) {
    slots = Math.ceil(slots / 2);
    sizes = layout(asm, spec, plan, draft, staging, threads);
  }
  if (totalBytes(sizes, slots, draft) > limit) {
    staging = "head";
    slots = 1;
    sizes = layout(asm, spec, plan, draft, staging, threads);
  }
  const total = totalBytes(sizes, slots, draft);
  if (total > limit) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "tokens",
      `the WebAssembly backend needs ${total} bytes of memory for one head of tokens = ` +
        `${spec.tokens}, headDim = ${spec.headDim}${draft ? `, g = ${plan.g}` : ""}; ` +
        `the limit is ${limit} (WebAssembly memory holds 4 GiB at most)`,
    );
  }
  asm.reset();
  const ptrs: Record<string, number> = {};
  const strides: Record<string, number> = {};
  for (const [name, bytes] of Object.entries(sizes)) {
    const perSlot = (PER_SLOT as readonly string[]).includes(name) &&
      (draft || (name !== "count" && name !== "list"));
    strides[name] = perSlot ? pad(bytes) : 0;
    ptrs[name] = asm.alloc(pad(bytes) * (perSlot ? slots : 1), `a run (${total} bytes)`);
  }
  return { staging, slots, ptrs, strides };
}

/**
 * Copies head (b, h) between a caller tensor and a staged [tokens][headDim] f32 array
 * (`"in"`: tensor -> staged, `"out"`: staged -> tensor), converting f16 on the way.
 */
function stageHead(
  staged: Float32Array,
  tensor: TensorArray,
  spec: DenseSpec,
  b: number,
  h: number,
  direction: "in" | "out",
): void {
  const { tokens: N, heads: H, headDim: D } = spec;
  if (spec.layout === "BHSD") {
    const base = (b * H + h) * N * D;
    if (direction === "in") staged.set(tensor.subarray(base, base + N * D));
    else tensor.set(staged, base);
    return;
  }
  for (let t = 0; t < N; t++) {
    const base = ((b * N + t) * H + h) * D;
    if (direction === "in") staged.set(tensor.subarray(base, base + D), t * D);
    else tensor.set(staged.subarray(t * D, t * D + D), base);
  }
}

/** Estimated FLOPs of a run (QK^T and PV over the kept blocks), to decide on sharing it. */
function estimateFlops(spec: DenseSpec, plan: Plan, keep: number): number {
  const { batch: B, heads: H, headDim: D, tokens: N } = spec;
  if (keep === 0) return 4 * B * H * N * N * D;
  const video = plan.videoTokens;
  const density = Math.min(1, keep / (plan.g * plan.g));
  return 4 * B * H * D * (video * video * density + (N * N - video * video));
}

/** A run's threads and buffers, and whether its inputs are in wasm memory already. */
interface Prepared {
  asm: AsmInstance;
  pool: WorkerPool | undefined;
  threads: number;
  a: Allocation;
  /** q, k and v are converted into the buffers (one batch element holds them all). */
  staged: boolean;
}

class WasmOp implements DraftKernelOp {
  #disposed = false;
  /** Copies of the inputs of runs that wait behind another run of the backend. */
  readonly #snapshots = new Snapshots();
  #mask: Uint8Array | undefined;
  #kept = 0;
  readonly #works = new Map<number, Work>();
  readonly #flops: number;
  /** Policy, estimator and mask reuse of a draft op (src/wasm/mask.ts). */
  readonly #stage: WasmMaskStage | undefined;

  constructor(
    readonly backend: WasmBackend,
    readonly spec: DenseSpec,
    readonly plan: Plan,
    readonly keep: number, // 0: dense
  ) {
    this.#flops = estimateFlops(spec, plan, keep);
    this.#stage = keep > 0 ? new WasmMaskStage(spec as DraftSpec, plan) : undefined;
  }

  get draft(): boolean {
    return this.keep > 0;
  }

  /**
   * Takes q, k and v before it returns (the runtime has checked them): when the backend is idle
   * the run's buffers are allocated and the inputs converted into wasm memory now, as the run
   * does anyway; when another run holds the memory (or a batch element at a time does not hold
   * them all), they are copied to wait for their turn. Failures reject the returned promise.
   */
  run(q: TensorArray, k: TensorArray, v: TensorArray, options?: RunOptions): Promise<TensorArray> {
    if (this.#disposed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "op", "used after dispose()"));
    }
    const backend = this.backend;
    let pre: Prepared | undefined;
    let failed: { e: unknown } | undefined;
    let copies: TensorArray[] | undefined;
    if (backend.idle) {
      try {
        pre = this.#prepare(q, k, v);
      } catch (e) {
        failed = { e }; // the run rejects with it below, after the checks it made before
      }
      if (pre && !pre.staged) copies = this.#snapshots.take([q, k, v]);
    } else if (!backend.disposed) copies = this.#snapshots.take([q, k, v]);
    const [qs, ks, vs] = copies ?? [q, k, v];
    return backend.enqueue(async () => {
      try {
        if (this.#disposed) throw new DraftAttentionError("DISPOSED", "op", "used after dispose()");
        this.#stage?.checkLayer(options?.layer);
        if (failed) throw failed.e;
        return await this.#run(qs, ks, vs, options?.layer, pre);
      } finally {
        if (copies) this.#snapshots.give(copies);
      }
    });
  }

  /**
   * Picks the threads, allocates the run's buffers in wasm memory (resetting it) and, when one
   * batch element holds the whole input, converts q, k and v into it.
   */
  #prepare(q: TensorArray, k: TensorArray, v: TensorArray): Prepared {
    const { spec, plan, draft } = this;
    const backend = this.backend;
    const asm = backend.instance();
    const pool = this.#flops >= backend.minParallelFlops ? backend.pool() : undefined;
    const threads = pool ? pool.size + 1 : 1;
    const a = allocate(asm, spec, plan, draft, backend.memoryLimit, threads);
    const staged = spec.batch === 1 && a.staging === "batch";
    if (staged) {
      const n = spec.tokens * spec.heads * spec.headDim;
      asm.f32(a.ptrs.q, n).set(q);
      asm.f32(a.ptrs.k, n).set(k);
      asm.f32(a.ptrs.v, n).set(v);
    }
    return { asm, pool, threads, a, staged };
  }

  #work(threads: number): Work {
    let w = this.#works.get(threads);
    if (!w) {
      w = workOf(this.plan, threads);
      this.#works.set(threads, w);
    }
    return w;
  }

  async #run(
    q: TensorArray,
    k: TensorArray,
    v: TensorArray,
    layer: number | undefined,
    /** Made at the call when the backend was idle; made here otherwise. */
    pre: Prepared = this.#prepare(q, k, v),
  ): Promise<TensorArray> {
    const { spec, plan, draft } = this;
    const { batch: B, heads: H, headDim: D, tokens: N } = spec;
    const { tiles, g } = plan;
    const { asm, pool, threads, a, staged } = pre;
    const work = this.#work(threads);
    const { staging, slots, ptrs: p, strides } = a;
    const x = asm.x;
    const slice = N * H * D;
    const bshd = spec.layout === "BSHD";
    const nChunks = work.chunks.length / 2;
    const nItems = work.items.length / 3;
    // Element strides of the staged tensors: a batch element in the caller's layout, or one
    // head as [tokens][headDim].
    const strideT = staging === "head" ? D : bshd ? H * D : D;
    const headStride = staging === "head" ? 0 : bshd ? D : N * D;
    const scale = Math.fround(spec.scale);
    const result = spec.dtype === "f16" ? new Float16Array(B * slice) : new Float32Array(B * slice);
    const masks = draft ? new Uint8Array(B * H * g * g) : undefined;
    let kept = 0;
    const stage = this.#stage;
    const due = stage?.due() ?? false;
    const tables = due ? stage!.begin(asm, threads) : undefined;

    asm.i32(p.order, N).set(plan.order);
    asm.i32(p.tileStart, tiles).set(plan.tileStart);
    asm.i32(p.tileLen, tiles).set(plan.tileLen);
    x.packedKeyOffsets(p.tileLen, tiles, D, p.offsets);
    if (!draft) {
      asm.i32(p.count, tiles).fill(tiles);
      const list = asm.i32(p.list, tiles);
      for (let t = 0; t < tiles; t++) list[t] = t;
    }
    const job: Job = {
      kind: PREP,
      n: 0,
      headDim: D,
      g,
      tiles,
      strideT,
      headStride,
      headBase: 0,
      scale,
      draft: draft ? 1 : 0,
      q: p.q,
      k: p.k,
      v: p.v,
      out: p.out,
      order: p.order,
      tileStart: p.tileStart,
      tileLen: p.tileLen,
      offsets: p.offsets,
      chunks: work.chunks,
      nChunks,
      items: work.items,
      nItems,
      perm: new Int32Array(0),
      qw: p.qw,
      kw: p.kw,
      vw: p.vw,
      rowsBytes: strides.qw,
      kt: p.kt,
      ktBytes: strides.kt,
      qd: p.qd ?? 0,
      kd: p.kd ?? 0,
      pooledBytes: strides.qd ?? 0,
      kdT: p.kdT ?? 0,
      kdTBytes: strides.kdT ?? 0,
      p: p.p ?? 0,
      pBytes: strides.p ?? 0,
      count: p.count,
      countBytes: strides.count,
      list: p.list,
      listBytes: strides.list,
      listStride: draft ? tiles : 0,
      scratch: p.scratch,
      scratchBytes: scratchBytes(asm, D),
    };
    const ctl = new Int32Array(2);
    const phase = async (kind: number, n: number) => {
      const j = { ...job, kind, n };
      if (pool && n > 1) await pool.phase(x, j);
      else phaseInline(x, j, ctl);
    };

    for (let b = 0; b < B; b++) {
      if (staging === "batch" && !staged) {
        asm.f32(p.q, slice).set(q.subarray(b * slice, (b + 1) * slice));
        asm.f32(p.k, slice).set(k.subarray(b * slice, (b + 1) * slice));
        asm.f32(p.v, slice).set(v.subarray(b * slice, (b + 1) * slice));
      }
      for (let h0 = 0; h0 < H; h0 += slots) {
        const count = Math.min(slots, H - h0);
        if (staging === "head") {
          for (const [src, ptr] of [[q, p.q], [k, p.k], [v, p.v]] as const) {
            stageHead(asm.f32(ptr, N * D), src, spec, b, h0, "in");
          }
        }
        job.headBase = staging === "head" ? 0 : h0;
        await phase(PREP, count * nChunks);
        if (draft) {
          if (due && stage!.usesDraftMap) await phase(DRAFT, count);
          // The sampled estimator (src/wasm/mask.ts) on every thread, items of query tiles.
          const sampled = due && stage!.samples;
          if (sampled) {
            job.sampled = stage!.job(tables!, threads, count);
            await phase(SAMPLED, count * job.sampled.nTileChunks);
          }
          for (let s = 0; s < count; s++) {
            const mask = p.mask + s * strides.mask;
            kept += due
              ? stage!.finish(asm, tables!, {
                qw: p.qw + s * strides.qw,
                kt: p.kt + s * strides.kt,
                offsets: p.offsets,
                tileStart: p.tileStart,
                tileLen: p.tileLen,
                p: p.p + s * strides.p,
                mask,
              }, sampled)
              : stage!.reuse(asm, this.#mask!, b * H + h0 + s, mask);
            x.maskToSchedule(
              mask,
              g,
              tiles,
              p.count + s * strides.count,
              p.list + s * strides.list,
            );
            masks!.set(asm.u8(mask, g * g), (b * H + h0 + s) * g * g);
          }
        }
        job.perm = this.#order(asm, a, count, work);
        await phase(FLASH, count * nItems);
        if (staging === "head") stageHead(asm.f32(p.out, N * D), result, spec, b, h0, "out");
      }
      if (staging === "batch") result.set(asm.f32(p.out, slice), b * slice);
    }
    if (masks) {
      this.#mask = masks;
      this.#kept = kept;
    }
    stage?.done(due, layer);
    return result;
  }

  /**
   * Writes the claim order of the FLASH items of `count` slots: the costliest first (rows x
   * key tiles of its list), so that no long item is left for the end of the phase.
   */
  #order(asm: AsmInstance, a: Allocation, count: number, work: Work): Int32Array {
    const nItems = work.items.length / 3;
    const n = count * nItems;
    const perm = new Int32Array(n);
    for (let i = 0; i < n; i++) perm[i] = i;
    if (!this.draft || n < 2) return perm;
    const cost = new Float64Array(n);
    const { items } = work;
    const tiles = this.plan.tiles;
    for (let s = 0; s < count; s++) {
      const counts = asm.i32(a.ptrs.count + s * a.strides.count, tiles);
      for (let i = 0; i < nItems; i++) {
        cost[s * nItems + i] = items[3 * i + 2] * counts[items[3 * i]];
      }
    }
    return Int32Array.from(Array.from(perm).sort((u, w) => cost[w] - cost[u] || u - w));
  }

  lastMask(): Promise<MaskResult> {
    if (this.#disposed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "op", "used after dispose()"));
    }
    const { g } = this.plan;
    const n = this.spec.batch * this.spec.heads * g * g;
    // Before the first run: an all-zero mask.
    const mask = this.#mask ? this.#mask.slice() : new Uint8Array(n);
    return Promise.resolve({ g, mask, density: this.#mask ? this.#kept / n : 0 });
  }

  dispose(): void {
    this.#disposed = true;
    this.#mask = undefined;
    this.#snapshots.clear();
  }
}

class WasmBackend implements Backend {
  readonly kind = "wasm" as const;
  /** Relaxed or plain SIMD, fixed when the backend is made (every instance and worker uses it). */
  readonly simd: AsmSimd = asmSimd();
  #asm: AsmInstance | undefined;
  #memory: WebAssembly.Memory | undefined;
  #pool: WorkerPool | undefined;
  #idle: ReturnType<typeof setTimeout> | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  /** Calls of {@linkcode enqueue} not yet settled. */
  #pending = 0;
  #disposed = false;
  /** Threads per run, the calling one included (1 when workers or shared memory are missing). */
  threads: number;
  memoryLimit: number;

  constructor(
    readonly reason: string,
    readonly build: Exclude<AsmBuild, "threads">,
    memoryLimit: number,
    threads: number,
    readonly minParallelFlops: number,
    readonly idleMs: number,
  ) {
    this.memoryLimit = memoryLimit;
    this.threads = build === "debug" || !threadsAvailable() ? 1 : threads;
    // Fail here, typed, rather than with a CompileError at the first run.
    if (this.simd === "none") asmModule(build, this.simd);
  }

  #check(): void {
    if (this.#disposed) {
      throw new DraftAttentionError("DISPOSED", "op", "the backend was disposed");
    }
  }

  /**
   * The module instance, created on first use (its memory grows to the largest run): the
   * `"threads"` build on a shared memory when runs may use workers, else the chosen build.
   */
  instance(): AsmInstance {
    this.#check();
    if (!this.#asm && this.threads > 1) {
      const shared = sharedMemory();
      if (shared) {
        this.#memory = shared.memory;
        this.memoryLimit = Math.min(this.memoryLimit, shared.bytes - RESERVED);
        this.#asm = new AsmInstance("threads", this.#memory, this.simd);
      } else {
        this.threads = 1;
      }
    }
    if (!this.#asm) this.#asm = new AsmInstance(this.build, undefined, this.simd);
    return this.#asm;
  }

  /**
   * The worker pool (threads - 1 workers), started on first use and again after a worker
   * failed or the pool sat idle; undefined when runs stay on the calling thread.
   */
  pool(): WorkerPool | undefined {
    this.instance();
    if (this.threads < 2 || !this.#memory) return undefined;
    if (this.#idle !== undefined) clearTimeout(this.#idle);
    this.#idle = undefined;
    if (this.#pool?.broken) {
      this.#pool.terminate();
      this.#pool = undefined;
    }
    if (!this.#pool) {
      try {
        this.#pool = new WorkerPool(
          asmModule("threads", this.simd),
          this.#memory,
          this.threads - 1,
        );
      } catch {
        // Workers cannot be created here (a content security policy, say): one thread.
        this.threads = 1;
        return undefined;
      }
    }
    return this.#pool;
  }

  /** Test hook: the live pool, if any. */
  /** Whether no run is queued or running: a new run may take wasm memory at its call. */
  get idle(): boolean {
    return this.#pending === 0 && !this.#disposed;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  get livePool(): WorkerPool | undefined {
    return this.#pool;
  }

  /**
   * Runs `fn` after every run queued before it (runs share the instance's memory), then arms
   * the idle timer that terminates the workers, so that an idle pool keeps no process alive.
   */
  enqueue<T>(fn: () => Promise<T>): Promise<T> {
    this.#pending++;
    const run = this.#queue.then(async () => {
      try {
        this.#check();
        return await fn();
      } finally {
        // Before the caller hears of the result: its next run finds the backend idle.
        this.#pending--;
      }
    });
    this.#queue = run.catch(() => {}).then(() => this.#armIdle());
    return run;
  }

  #armIdle(): void {
    if (!this.#pool || this.#disposed) return;
    if (this.#idle !== undefined) clearTimeout(this.#idle);
    this.#idle = setTimeout(() => {
      this.#idle = undefined;
      this.#pool?.terminate();
      this.#pool = undefined;
    }, this.idleMs);
    // Deno: the timer alone does not keep the process alive (browsers have no such notion).
    const timer = this.#idle as unknown as { unref?(): void };
    if (typeof timer.unref === "function") timer.unref();
    else {
      (globalThis as { Deno?: { unrefTimer?(id: number): void } }).Deno?.unrefTimer?.(
        Number(this.#idle),
      );
    }
  }

  info(): BackendInfo {
    const threads = this.threads;
    return {
      backend: "wasm",
      adapter: "WebAssembly SIMD",
      reason: this.reason,
      features: [
        "simd",
        ...(this.simd === "relaxed" ? ["relaxed-simd"] : []),
        ...(threads > 1 ? ["threads"] : []),
      ],
      threads,
    };
  }

  checkSize(spec: DenseSpec, g: number, tiles: number): void {
    const least = leastRunBytes(spec, g, tiles);
    if (least > this.memoryLimit) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "tokens",
        `the WebAssembly backend needs at least ${least} bytes of memory for one head of ` +
          `tokens = ${spec.tokens}, headDim = ${spec.headDim}${g ? `, g = ${g}` : ""}; the ` +
          `limit is ${this.memoryLimit} (WebAssembly memory holds 4 GiB at most)`,
      );
    }
  }

  dense(spec: DenseSpec): KernelOp {
    return new WasmOp(this, spec, densePlan(spec.tokens), 0);
  }

  draft(spec: DraftSpec, plan: Plan): DraftKernelOp {
    return new WasmOp(this, spec, plan, spec.keep);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#idle !== undefined) clearTimeout(this.#idle);
    this.#idle = undefined;
    this.#pool?.terminate(
      new DraftAttentionError("DISPOSED", "op", "the backend was disposed during a run"),
    );
    this.#pool = undefined;
    this.#asm = undefined;
    this.#memory = undefined;
  }
}

/**
 * Creates the WebAssembly backend. `reason` says why it was chosen (shown by `info()`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createWasmBackend } from "./backend.ts";
 * const backend = createWasmBackend("example");
 * const op = backend.dense({
 *   batch: 1, tokens: 3, heads: 1, headDim: 4, layout: "BSHD", dtype: "f32", scale: 0.5,
 * });
 * const x = new Float32Array(12).fill(1);
 * const out = await op.run(x, x, x);
 * assert.ok(out.every((y) => Math.abs(y - 1) < 1e-6));
 * backend.dispose();
 * ```
 */
export function createWasmBackend(reason: string, options: WasmBackendOptions = {}): Backend {
  const limit = Math.min(options.memoryLimit ?? Infinity, WASM_MEMORY - RESERVED);
  return new WasmBackend(
    reason,
    options.build ?? "release",
    limit,
    options.threads ?? defaultThreads(),
    options.minParallelFlops ?? 2 ** 25,
    options.idleMs ?? 2000,
  );
}
