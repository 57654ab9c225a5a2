/**
 * Worker threads for the WebAssembly backend: every worker instantiates the `"threads"` build
 * of asm/ on one shared `WebAssembly.Memory`, and a run is cut into phases of independent work
 * items (src/wasm/backend.ts says which). The calling thread and the workers claim items from
 * one atomic counter until none is left, so a phase ends when its slowest item does.
 *
 * Workers are created from a Blob URL of source generated here from {@linkcode execItem} and
 * {@linkcode workLoop} (`Function.prototype.toString`), so they work the same when draftattn is
 * imported by URL and inside the single-file bundle: no file, no fetch, no import. Those two
 * functions therefore use nothing but their parameters and globals (`Atomics`, `Math`).
 *
 * A worker that throws (a trap, an abort) reports it and sets the abort flag so that the other
 * threads stop claiming; a worker that dies (an uncaught error) is counted as finished. Either
 * way the phase rejects with `WORKER_ERROR` once every other worker has stopped, never hangs,
 * and the pool is marked broken (the backend starts a new one for the next run).
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import type { AsmExports } from "../_asm.ts";
import type { SampledJob } from "./mask.ts";

/** Item kinds of a phase. */
export const PREP = 0;
export const DRAFT = 1;
export const FLASH = 2;
/** The sampled block-importance estimator (src/wasm/mask.ts), items of query tiles. */
export const SAMPLED = 3;

/**
 * One phase: `n` items of one kind over one run's buffers (byte offsets into the shared memory)
 * and its item tables (posted along: a worker's view of a shared memory that another thread
 * grew can stay stale in V8, so workers never read the memory from JavaScript, only from wasm).
 * Slot `s` of a per-slot buffer `X` starts at `X + s * XBytes`; slot `s` computes head
 * `headBase + s` of the staged tensors.
 */
export interface Job {
  kind: number;
  n: number;
  headDim: number;
  g: number;
  tiles: number;
  strideT: number;
  headStride: number;
  headBase: number;
  scale: number;
  draft: number;
  q: number;
  k: number;
  v: number;
  out: number;
  order: number;
  tileStart: number;
  tileLen: number;
  offsets: number;
  /** Pairs [t0, t1): the tile ranges of the PREP items of one slot. */
  chunks: Int32Array;
  nChunks: number;
  /** Triples (tile, first row in the tile, rows): the FLASH items of one slot. */
  items: Int32Array;
  nItems: number;
  /** FLASH: the claim order of the items, as `slot * nItems + item`. */
  perm: Int32Array;
  qw: number;
  kw: number;
  vw: number;
  rowsBytes: number;
  kt: number;
  ktBytes: number;
  qd: number;
  kd: number;
  pooledBytes: number;
  kdT: number;
  kdTBytes: number;
  p: number;
  pBytes: number;
  count: number;
  countBytes: number;
  list: number;
  listBytes: number;
  listStride: number;
  scratch: number;
  scratchBytes: number;
  /** SAMPLED only (src/wasm/mask.ts `SampledJob`); absent otherwise. */
  sampled?: SampledJob;
}

/** Control words (Int32Array indices): next item to claim, abort flag. */
const NEXT = 0;
const ABORT = 1;

/**
 * Runs item `i` of job `j` on thread `thread` (0 = the calling thread). Self-contained: it is
 * also compiled into the worker source.
 */
export function execItem(x: AsmExports, j: Job, i: number, thread: number): void {
  if (j.kind === 0) {
    const s = Math.floor(i / j.nChunks);
    const c = i - s * j.nChunks;
    const t0 = j.chunks[2 * c];
    const t1 = j.chunks[2 * c + 1];
    x.prepTiles(
      j.q,
      j.k,
      j.v,
      j.strideT,
      (j.headBase + s) * j.headStride,
      j.order,
      j.tileStart,
      j.tileLen,
      j.offsets,
      t0,
      t1,
      j.g,
      j.headDim,
      j.qw + s * j.rowsBytes,
      j.kw + s * j.rowsBytes,
      j.vw + s * j.rowsBytes,
      j.kt + s * j.ktBytes,
      j.draft ? j.qd + s * j.pooledBytes : 0,
      j.draft ? j.kd + s * j.pooledBytes : 0,
    );
  } else if (j.kind === 1) {
    x.draftMap(
      j.qd + i * j.pooledBytes,
      j.kd + i * j.pooledBytes,
      j.g,
      j.headDim,
      j.scale,
      j.kdT + i * j.kdTBytes,
      j.p + i * j.pBytes,
    );
  } else if (j.kind === 3) {
    const e = j.sampled!;
    const s = Math.floor(i / e.nTileChunks);
    const i0 = (i - s * e.nTileChunks) * e.tileChunk;
    // asm/selection.ts `sampledMap` (not in AsmExports, which lists asm/attention.ts).
    (x as unknown as Record<string, (...a: number[]) => void>).sampledMap(
      j.qw + s * j.rowsBytes,
      j.kt + s * j.ktBytes,
      j.offsets,
      j.tileStart,
      j.tileLen,
      j.tiles,
      j.g,
      e.tokens,
      j.headDim,
      j.scale,
      e.samples,
      e.maxSamples,
      e.coef,
      e.hybrid,
      e.estScratch + thread * e.estScratchBytes,
      j.p + s * j.pBytes,
      i0,
      Math.min(j.g, i0 + e.tileChunk),
    );
  } else {
    const pi = j.perm[i];
    const s = Math.floor(pi / j.nItems);
    const it = 3 * (pi - s * j.nItems);
    x.flashBlock(
      j.qw + s * j.rowsBytes,
      j.kt + s * j.ktBytes,
      j.offsets,
      j.vw + s * j.rowsBytes,
      j.out,
      j.strideT,
      (j.headBase + s) * j.headStride,
      j.order,
      j.tileStart,
      j.tileLen,
      j.items[it],
      j.items[it + 1],
      j.items[it + 2],
      j.count + s * j.countBytes,
      j.list + s * j.listBytes,
      j.listStride,
      j.headDim,
      j.scale,
      j.scratch + thread * j.scratchBytes,
    );
  }
}

/**
 * Claims and runs items of `j` until none is left or the abort flag is set; returns how many it
 * ran. Self-contained.
 */
export function workLoop(
  x: AsmExports,
  j: Job,
  ctl: Int32Array,
  thread: number,
  exec: typeof execItem,
): number {
  let ran = 0;
  for (;;) {
    if (Atomics.load(ctl, 1) !== 0) return ran;
    const i = Atomics.add(ctl, 0, 1);
    if (i >= j.n) return ran;
    exec(x, j, i, thread);
    ran++;
  }
}

/** The worker's message loop. Self-contained; `exec` and `loop` are the two functions above. */
function workerMain(exec: typeof execItem, loop: typeof workLoop): void {
  let x: AsmExports | undefined;
  let ctl: Int32Array | undefined;
  let thread = 0;
  let fault = false;
  let die = false;
  const text = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  // The worker's global scope (typed here, where the checker sees the window's).
  const scope = globalThis as unknown as {
    onmessage: (e: MessageEvent) => void;
    postMessage(message: unknown): void;
  };
  scope.onmessage = (e: MessageEvent) => {
    const m = e.data;
    if (m.type === "init") {
      try {
        const abort = () => {
          throw new Error("asm abort (an assertion failed in a worker)");
        };
        const instance = new WebAssembly.Instance(m.module, { env: { memory: m.memory, abort } });
        x = instance.exports as unknown as AsmExports;
        ctl = new Int32Array(m.ctl);
        thread = m.thread;
        scope.postMessage({ type: "ready" });
      } catch (err) {
        scope.postMessage({ type: "error", message: text(err) });
      }
    } else if (m.type === "phase") {
      // Test hook: an uncaught error in the middle of a phase kills the worker.
      if (die) throw new Error("injected worker death");
      try {
        if (fault) {
          fault = false;
          // Test hook: a real trap, an out-of-bounds access of the shared memory.
          x!.gatherRows(0, 1, 0, 0xfffffff0, 1, 4, 0);
        }
        const t0 = performance.now();
        const items = loop(x!, m.job, ctl!, thread, exec);
        scope.postMessage({ type: "done", gen: m.gen, items, ms: performance.now() - t0 });
      } catch (err) {
        Atomics.store(ctl!, 1, 1);
        scope.postMessage({ type: "error", gen: m.gen, message: text(err) });
      }
    } else if (m.type === "fault") {
      fault = true;
    } else if (m.type === "die") {
      die = true;
    } else if (m.type === "crash") {
      // Test hook: an uncaught error kills the worker.
      setTimeout(() => {
        throw new Error("injected worker crash");
      });
    }
  };
}

let workerUrl: string | undefined;

/** The Blob URL of the worker source (made once per process). */
function workerSource(): string {
  if (!workerUrl) {
    const source = `const execItem = ${execItem.toString()};\n` +
      `const workLoop = ${workLoop.toString()};\n` +
      `(${workerMain.toString()})(execItem, workLoop);\n`;
    workerUrl = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  }
  return workerUrl;
}

/** Whether this engine can run the pool: module workers, Blob URLs and shared memory. */
export function threadsAvailable(): boolean {
  return typeof Worker === "function" && typeof SharedArrayBuffer === "function" &&
    typeof Blob === "function" && typeof URL?.createObjectURL === "function" &&
    typeof Atomics === "object";
}

function workerError(detail: string): DraftAttentionError {
  return new DraftAttentionError("WORKER_ERROR", "threads", detail);
}

/**
 * What the threads did since the pool started: items run and milliseconds spent in phases, per
 * thread (index 0: the calling thread), and the phases run.
 */
export interface PoolStats {
  phases: number;
  items: number[];
  ms: number[];
}

interface Pending {
  gen: number;
  /** Workers of the phase still running. */
  running: Set<number>;
  error: DraftAttentionError | undefined;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** `count` workers on one shared memory; the calling thread is thread 0, workers 1..count. */
export class WorkerPool {
  readonly ctl = new Int32Array(new SharedArrayBuffer(16));
  readonly #workers: Worker[] = [];
  readonly #ready: Promise<void>;
  #pending: Pending | undefined;
  #gen = 0;
  #broken: DraftAttentionError | undefined;
  #starting: Pending | undefined;
  /** Load balance, for benchmarks. */
  readonly stats: PoolStats;

  /** Throws (synchronously) when a worker cannot be created at all. */
  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, count: number) {
    this.stats = { phases: 0, items: Array(count + 1).fill(0), ms: Array(count + 1).fill(0) };
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#starting = {
        gen: 0,
        running: new Set(),
        error: undefined,
        resolve,
        reject,
      };
    });
    // A failed start is reported by the first phase; never an unhandled rejection.
    this.#ready.catch(() => {});
    const url = workerSource();
    try {
      for (let w = 1; w <= count; w++) {
        const worker = new Worker(url, { type: "module", name: `draftattn-wasm-${w}` });
        worker.onmessage = (e: MessageEvent) => this.#message(w, e.data);
        worker.onerror = (e: ErrorEvent) => {
          e.preventDefault(); // handled here: do not take the process down
          this.#died(w, `worker ${w} died: ${e.message}`);
        };
        worker.onmessageerror = () => this.#died(w, `worker ${w} could not read a message`);
        this.#workers.push(worker);
        this.#starting!.running.add(w);
        worker.postMessage({ type: "init", module, memory, ctl: this.ctl.buffer, thread: w });
      }
    } catch (e) {
      this.terminate();
      throw e;
    }
  }

  /** Workers (threads besides the calling one). */
  get size(): number {
    return this.#workers.length;
  }

  /** Set once a worker failed: the pool must be replaced. */
  get broken(): DraftAttentionError | undefined {
    return this.#broken;
  }

  #settle(p: Pending, w: number, error?: DraftAttentionError): void {
    if (!p.running.delete(w)) return;
    if (error) p.error ??= error;
    if (p.running.size === 0) {
      if (p === this.#pending) this.#pending = undefined;
      if (p === this.#starting) this.#starting = undefined;
      if (p.error) p.reject(p.error);
      else p.resolve();
    }
  }

  #message(
    w: number,
    m: { type: string; gen?: number; message?: string; items?: number; ms?: number },
  ): void {
    const p = m.gen === undefined ? this.#starting : this.#pending;
    if (m.type === "ready") {
      if (this.#starting) this.#settle(this.#starting, w);
    } else if (m.type === "done") {
      this.stats.items[w] += m.items ?? 0;
      this.stats.ms[w] += m.ms ?? 0;
      if (p && p.gen === m.gen) this.#settle(p, w);
    } else if (m.type === "error") {
      const e = workerError(`worker ${w} failed: ${m.message}`);
      this.#broken ??= e;
      if (p && (m.gen === undefined || p.gen === m.gen)) this.#settle(p, w, e);
    }
  }

  #died(w: number, detail: string): void {
    const e = workerError(detail);
    this.#broken ??= e;
    Atomics.store(this.ctl, ABORT, 1);
    for (const p of [this.#starting, this.#pending]) if (p) this.#settle(p, w, e);
  }

  /**
   * Runs the `j.n` items of a phase on the calling thread and on up to `j.n - 1` workers.
   * Resolves when every item ran; rejects with the first error (a worker's: WORKER_ERROR) once
   * no thread runs items any more.
   */
  async phase(x: AsmExports, j: Job): Promise<void> {
    await this.#ready;
    if (this.#broken) throw this.#broken;
    const ctl = this.ctl;
    Atomics.store(ctl, NEXT, 0);
    Atomics.store(ctl, ABORT, 0);
    const helpers = Math.min(this.#workers.length, j.n - 1);
    let done: Promise<void> | undefined;
    if (helpers > 0) {
      const gen = ++this.#gen;
      done = new Promise<void>((resolve, reject) => {
        this.#pending = { gen, running: new Set(), error: undefined, resolve, reject };
      });
      for (let w = 1; w <= helpers; w++) {
        this.#pending!.running.add(w);
        this.#workers[w - 1].postMessage({ type: "phase", gen, job: j });
      }
    }
    let error: unknown;
    const t0 = performance.now();
    this.stats.phases++;
    try {
      this.stats.items[0] += workLoop(x, j, ctl, 0, execItem);
      this.stats.ms[0] += performance.now() - t0;
    } catch (e) {
      Atomics.store(ctl, ABORT, 1);
      error = e;
    }
    if (done) {
      try {
        await done;
      } catch (e) {
        error ??= e;
      }
    }
    if (error) throw error;
  }

  /**
   * Test hook: worker `w` traps in its next phase (`"fault"`), dies at the start of its next
   * phase (`"die"`) or dies now, idle (`"crash"`).
   */
  inject(w: number, what: "fault" | "die" | "crash"): void {
    this.#workers[w - 1].postMessage({ type: what });
  }

  /** Terminates every worker; a phase in flight rejects with `reason`. */
  terminate(reason?: DraftAttentionError): void {
    for (const worker of this.#workers) worker.terminate();
    const e = reason ?? new DraftAttentionError("DISPOSED", "op", "the worker pool was stopped");
    this.#broken ??= e;
    Atomics.store(this.ctl, ABORT, 1);
    for (const p of [this.#starting, this.#pending]) {
      if (!p) continue;
      p.error ??= e;
      for (const w of [...p.running]) this.#settle(p, w);
    }
  }
}

/** Runs a phase on the calling thread alone (no pool, or too little work to share). */
export function phaseInline(x: AsmExports, j: Job, ctl: Int32Array): void {
  Atomics.store(ctl, NEXT, 0);
  Atomics.store(ctl, ABORT, 0);
  workLoop(x, j, ctl, 0, execItem);
}
