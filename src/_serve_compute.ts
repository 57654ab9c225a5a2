/**
 * Where the edge handler computes: on module workers (src/_serve_worker.ts), one per request
 * computing at once, each with its own runtime, so that the server's event loop only moves
 * bytes. A request cancelled (`request.signal`) or past its time budget is stopped by
 * terminating its worker; the next request starts a fresh one.
 *
 * Where there is no `Worker` (Deno Deploy, Supabase Edge Functions) the handler computes on its
 * own thread instead (src/serve.ts), bounded only by the up-front FLOP budget.
 *
 * Also the FLOP estimate that budget is checked against, and the error type of HTTP-only
 * rejections.
 *
 * @module
 */
import { DraftAttentionError, type DraftAttentionErrorCode } from "./errors.ts";
import { resolveDraft } from "./validate.ts";
import type { AttentionRequest, AttentionResult } from "./_request.ts";
import type { Tensor } from "./_tensor.ts";
import type { BackendInfo, BackendKind } from "./types.ts";

/** A rejection that exists only over HTTP (busy, timed out, unauthorized, ...). */
export class ServeError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly field: string,
    detail: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(`${field}: ${detail}`);
    this.name = "ServeError";
  }
}

/**
 * Floating-point operations of a request, estimated before it runs: `4 * batch * heads *
 * headDim` per (query, key) pair attended (QK^T and PV, a multiply and an add each). Dense
 * attends every pair; draft attends every pair touching a text token and the kept share of
 * video-video pairs (the percentile keeps `keep` of `g^2` block pairs; a row policy may keep
 * more, counted at its cap). The draft map itself (`g^2 * headDim`) is included.
 */
export function estimateFlops(request: AttentionRequest, tokens: number): number {
  const o = request.options;
  const per = 4 * (o.batch ?? 1) * (o.heads ?? 1) * (o.headDim ?? 64);
  if (request.mode === "dense") return per * tokens * tokens;
  const spec = resolveDraft(request.options);
  const video = spec.frames * spec.height * spec.width;
  const g = spec.frames * Math.ceil(spec.height / spec.poolH) *
    Math.ceil(spec.width / spec.poolW);
  const kept = Math.min(1, Math.max(spec.keep, (spec.rowKeep ?? 0) * g) / (g * g));
  const pairs = tokens * tokens - video * video * (1 - kept);
  return per * pairs + per * g * g;
}

/** Index of the abort flag in a WebAssembly pool's control words (src/wasm/pool.ts). */
const POOL_ABORT = 1;

const RESTART: ReadonlySet<string> = new Set(["DEVICE_LOST", "DISPOSED", "WORKER_ERROR"]);

/** An error that crossed from the worker as data, rebuilt. */
function rebuild(e: { code: string; field: string; message: string }): Error {
  if (e.code === "INTERNAL") return new Error(e.message);
  const prefix = `Invalid ${e.field}: `;
  const detail = e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
  return new DraftAttentionError(e.code as DraftAttentionErrorCode, e.field, detail);
}

interface Pending {
  resolve: (r: AttentionResult) => void;
  reject: (e: unknown) => void;
}

class Slot {
  readonly worker: Worker;
  readonly ready: Promise<BackendInfo>;
  pending: Pending | undefined;
  dead = false;
  #ready!: { resolve: (i: BackendInfo) => void; reject: (e: unknown) => void };
  /** The control words of the worker's WebAssembly pools (src/_serve_worker.ts). */
  readonly #controls: Int32Array[] = [];

  constructor(backend: "auto" | BackendKind, threads: number | undefined) {
    this.ready = new Promise((resolve, reject) => (this.#ready = { resolve, reject }));
    this.ready.catch(() => {}); // reported by the run or health check that awaits it
    this.worker = new Worker(new URL("./_serve_worker.ts", import.meta.url), {
      type: "module",
      name: "draftattn-serve",
    });
    this.worker.onmessage = (e: MessageEvent) => {
      const m = e.data;
      if (m.type === "control") {
        // The latest few pools' control words (the backend replaces an idle pool).
        this.#controls.push(new Int32Array(m.ctl as SharedArrayBuffer));
        if (this.#controls.length > 4) this.#controls.shift();
      } else if (m.type === "ready") this.#ready.resolve(m.info);
      else if (m.type === "done") this.#settle((p) => p.resolve(m.result));
      else if (m.type === "failed") {
        const error = rebuild(m.error);
        if (m.id === undefined) {
          this.dead = true;
          this.#ready.reject(error);
        } else {
          if (RESTART.has(m.error.code)) this.kill(error);
          else this.#settle((p) => p.reject(error));
        }
      }
    };
    this.worker.onerror = (e: ErrorEvent) => {
      e.preventDefault(); // handled here: the server stays up
      this.#fail(`the compute worker died: ${e.message}`);
    };
    this.worker.onmessageerror = () => this.#fail("the compute worker sent an unreadable message");
    this.worker.postMessage({ type: "init", backend, threads });
  }

  #settle(f: (p: Pending) => void): void {
    const p = this.pending;
    this.pending = undefined;
    if (p) f(p);
  }

  #fail(detail: string): void {
    const error = new DraftAttentionError("WORKER_ERROR", "server", detail);
    this.#ready.reject(error);
    this.kill(error);
  }

  /** Terminates the worker; a run in flight rejects with `error`. */
  kill(
    error: unknown = new DraftAttentionError("DISPOSED", "server", "handler was closed"),
  ): void {
    this.dead = true;
    // First the pools' abort word, which their threads check before each item: Deno 2.9.6
    // ends a worker only once it returns to its event loop, and a run does so only between
    // phases (src/_serve_worker.ts).
    for (const ctl of this.#controls) Atomics.store(ctl, POOL_ABORT, 1);
    this.worker.terminate();
    this.#ready.reject(error);
    this.#settle((p) => p.reject(error));
  }
}

/** What {@linkcode WorkerCompute.run} needs. */
export interface ComputeJob {
  request: AttentionRequest;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** Aborts the run (the client went away): the worker is terminated. */
  signal?: AbortSignal;
  /** Milliseconds the run may take before its worker is terminated. */
  timeoutMs: number;
}

/** Compute workers; at most one run per worker at a time, the caller bounds how many run. */
export class WorkerCompute {
  readonly #idle: Slot[] = [];
  readonly #busy = new Set<Slot>();
  #info: BackendInfo | undefined;
  #starting: Promise<BackendInfo> | undefined;
  #closed = false;

  constructor(
    readonly backend: "auto" | BackendKind,
    readonly threads: number | undefined,
  ) {}

  /** The backend of the workers, once one has started. */
  get info(): BackendInfo | undefined {
    return this.#info;
  }

  #take(): Slot {
    for (;;) {
      const slot = this.#idle.pop();
      if (!slot) return new Slot(this.backend, this.threads);
      if (!slot.dead) return slot;
    }
  }

  /**
   * Starts a worker if none is idle and waits until its runtime is open. Callers that arrive
   * meanwhile share that wait: `/health` polled while the first worker warms up started a
   * worker (and its threads) per call.
   */
  ready(): Promise<BackendInfo> {
    if (this.#info) return Promise.resolve(this.#info);
    this.#starting ??= this.#start().finally(() => (this.#starting = undefined));
    return this.#starting;
  }

  async #start(): Promise<BackendInfo> {
    const slot = this.#take();
    try {
      this.#info = await slot.ready;
      return this.#info;
    } finally {
      if (!slot.dead && !this.#closed) this.#idle.push(slot);
      else slot.kill();
    }
  }

  /** Runs a job on an idle (or new) worker. */
  async run(job: ComputeJob): Promise<AttentionResult> {
    const slot = this.#take();
    this.#busy.add(slot);
    // Listened for from the start, not once the worker is ready: a fresh worker takes its
    // warm-up (about a second) to be ready, and an abort in that time stops it at once.
    const onAbort = () =>
      slot.kill(new ServeError(499, "ABORTED", "request", "the client closed the request"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ok = false;
    try {
      if (job.signal?.aborted) onAbort();
      else job.signal?.addEventListener("abort", onAbort, { once: true });
      this.#info = await slot.ready;
      const result = await new Promise<AttentionResult>((resolve, reject) => {
        slot.pending = { resolve, reject };
        timer = setTimeout(() =>
          slot.kill(
            new ServeError(
              503,
              "TIMEOUT",
              "timeoutMs",
              `the run took longer than ${job.timeoutMs} ms and was stopped`,
            ),
          ), job.timeoutMs);
        const { q, k, v } = job;
        // The tensors are the parser's own copies: moved, not copied, to the worker.
        const transfer = [...new Set([q.data.buffer, k.data.buffer, v.data.buffer])];
        slot.worker.postMessage(
          { type: "run", id: 1, request: job.request, tensors: [q, k, v] },
          transfer as ArrayBuffer[],
        );
      });
      ok = true;
      return result;
    } finally {
      clearTimeout(timer);
      job.signal?.removeEventListener("abort", onAbort);
      this.#busy.delete(slot);
      if (ok && !slot.dead && !this.#closed) this.#idle.push(slot);
      else slot.kill();
    }
  }

  /** Terminates every worker (runs in flight reject). */
  close(): void {
    this.#closed = true;
    for (const slot of [...this.#idle, ...this.#busy]) slot.kill();
    this.#idle.length = 0;
  }
}
