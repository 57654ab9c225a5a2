/**
 * An HTTP handler for `Deno.serve` (or any `fetch`-style edge runtime): POST a `.safetensors`
 * body holding `q`, `k`, `v` with the request in `__metadata__`, get `out` back as
 * `.safetensors`. Runs on WebGPU where there is a hardware adapter and on WebAssembly elsewhere.
 *
 * Request metadata (all strings): `mode` (`"draft"`, default, or `"dense"`), `layout` (`"BSHD"`,
 * default, or `"BHSD"`), `model` (a bundled profile) and/or the geometry `frames`, `height`,
 * `width`, `textTokens`, `textPosition`, `pool` (`"8x16"`), `sparsity`, `scale`; `heads` and
 * `headDim` are read off the tensors (and checked when given). Response metadata: `backend`,
 * `mode`, `ms` (time of the attention run), and for draft mode `density` and `g`.
 *
 * Built to face slow, heavy and hostile clients (docs/serve.md): compute runs on a module
 * worker, off the event loop, so `GET /health` always answers; a request is costed in FLOPs
 * before it runs and stopped when its client goes away or its time runs out; bodies must
 * arrive within a deadline and take a compute slot only once they are in; the header is
 * checked for repeated keys and bounded before it is parsed. Where there is no `Worker` (Deno
 * Deploy, Supabase Edge Functions) it computes on its own thread.
 *
 * Answers: 200 with the output; 400 `{ error: { code, field, message } }` for a malformed
 * request; 401 without the bearer token (when one is set); 405 for other methods; 408 for a
 * body not received in time; 413 for a body, tensor or FLOP estimate over the limits; 415 for
 * a content type other than `application/octet-stream`; 429 when too many bodies upload or
 * too many requests wait; 503 when no backend can be opened, the device was lost or a run
 * passed its time. docs/errors.md lists every case.
 *
 * Run it with `deno task serve` (`--help` lists the flags; it binds 127.0.0.1 by default).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DraftAttentionError } from "./errors.ts";
import { openRuntime, type Runtime } from "./runtime.ts";
import { encodeSafetensors, parseSafetensors } from "./safetensors.ts";
import { buildRequest, OpCache, runRequest } from "./_request.ts";
import { checkHeader } from "./_serve_header.ts";
import { estimateFlops, ServeError, WorkerCompute } from "./_serve_compute.ts";
import { ConnectionWatcher } from "./_serve_conn.ts";
import type { Tensor } from "./_tensor.ts";
import type { BackendInfo, BackendKind } from "./types.ts";

/** Options of {@linkcode createHandler}. Every number must be an integer in its range. */
export interface HandlerOptions {
  /**
   * A runtime to use (the caller keeps ownership); by default one is opened on first use.
   * Runs on a given runtime happen on the caller's thread (`compute: "inline"`).
   */
  runtime?: Runtime | Promise<Runtime>;
  /** Backend of the runtime the handler opens itself; default `"auto"`. */
  backend?: "auto" | BackendKind;
  /**
   * `"worker"`: each run on a module worker with its own runtime, off the event loop, stopped
   * on cancellation or timeout. `"inline"`: on this thread (WebAssembly runs then block the
   * event loop for their duration; only `maxFlops` bounds them). Default: `"worker"` where
   * `Worker` exists and no `runtime` is given, else `"inline"`.
   */
  compute?: "worker" | "inline";
  /** WebAssembly threads of the runtime the handler opens (see `RuntimeOptions.threads`). */
  threads?: number;
  /** Largest request body in bytes; default 256 MiB. */
  maxBodyBytes?: number;
  /** Largest `.safetensors` JSON header in bytes; default 64 KiB (q, k, v need < 1 KiB). */
  maxHeaderBytes?: number;
  /** Largest element count of each of q, k, v; default 2^26 (256 MiB of f32). */
  maxTensorElements?: number;
  /**
   * Largest estimated FLOP count of one request (`4 * batch * heads * headDim` per attended
   * pair); over it is 413 before anything runs. Default 2^38 on WebAssembly (seconds on a few
   * cores), 2^46 on WebGPU.
   */
  maxFlops?: number;
  /** Milliseconds a run may take before its worker is stopped (503); default 60,000. */
  timeoutMs?: number;
  /** Milliseconds to receive a whole body once its headers are in (408); default 60,000. */
  bodyTimeoutMs?: number;
  /** Bodies being received at once (429 beyond); default 16. */
  maxUploads?: number;
  /** Requests computing at once; default 1 (one device, one queue). */
  maxConcurrent?: number;
  /** Requests with their body in, waiting for a compute slot; default 8. */
  maxQueue?: number;
  /** When set, POSTs must carry `Authorization: Bearer <token>` (401 otherwise). */
  token?: string;
}

/**
 * A `fetch`-style handler with a `close()` that frees its ops and the runtime it opened. The
 * second argument is what `Deno.serve` passes (its `remoteAddr` lets the handler notice a
 * client that closed its connection; other callers may leave it out).
 */
export interface AttentionHandler {
  (request: Request, info?: { remoteAddr?: unknown }): Promise<Response>;
  /** Disposes cached ops and, when the handler opened it, the runtime and compute workers. */
  close(): void;
}

const STATUS: Readonly<Record<string, number>> = {
  INVALID_OPTION: 400,
  INVALID_INPUT: 400,
  INVALID_BUFFER: 400,
  UNSUPPORTED: 400,
  UNKNOWN_MODEL: 400,
  TOO_LARGE: 413,
  NO_BACKEND: 503,
  DEVICE_LOST: 503,
  DISPOSED: 503,
  GPU_ERROR: 503,
  WORKER_ERROR: 503,
};

/** Media types a request body may declare. */
const MEDIA_TYPES = new Set(["application/octet-stream", "application/x-safetensors"]);
/** Longest message or field sent back: a rejected value is named, never echoed in full. */
const MAX_MESSAGE = 400;
const OPTION_KEYS = new Set([
  "runtime",
  "backend",
  "compute",
  "threads",
  "maxBodyBytes",
  "maxHeaderBytes",
  "maxTensorElements",
  "maxFlops",
  "timeoutMs",
  "bodyTimeoutMs",
  "maxUploads",
  "maxConcurrent",
  "maxQueue",
  "token",
]);

function cut(s: string): string {
  return s.length <= MAX_MESSAGE ? s : `${s.slice(0, MAX_MESSAGE)}... (${s.length} characters)`;
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorJson(
  status: number,
  code: string,
  field: string,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return json(status, { error: { code, field: cut(field), message: cut(message) } }, headers);
}

function errorResponse(e: unknown): Response {
  if (e instanceof ServeError) return errorJson(e.status, e.code, e.field, e.message, e.headers);
  if (e instanceof DraftAttentionError) {
    return errorJson(STATUS[e.code] ?? 500, e.code, e.field, e.message);
  }
  return errorJson(500, "INTERNAL", "server", String((e as Error)?.message ?? e));
}

function integer(field: string, value: unknown, def: number, min: number, max: number): number {
  const v = value ?? def;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be an integer in [${min}, ${max}], got ${
        typeof v === "string" ? JSON.stringify(cut(v)) : String(v)
      }`,
    );
  }
  return v;
}

/** Compares a header with the token in time that does not depend on where they differ. */
function sameToken(given: string, token: string): boolean {
  const a = new TextEncoder().encode(given), b = new TextEncoder().encode(token);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i];
  return diff === 0;
}

/**
 * Reads at most `max` bytes of a body within `ms` milliseconds. `Content-Length` is checked
 * first (any number of digits: a 16-digit one is 413, not 400); memory grows with the bytes
 * that arrive, never with what the client declared.
 */
async function readBody(request: Request, max: number, ms: number): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    if (!/^\d+$/.test(declared)) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        "content-length",
        `got ${JSON.stringify(cut(declared))}`,
      );
    }
    if (declared.replace(/^0+/, "").length > 15 || Number(declared) > max) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "body",
        `Content-Length ${cut(declared)} exceeds the limit of ${max} bytes (maxBodyBytes)`,
      );
    }
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    reader.cancel().catch(() => {});
  }, ms);
  // Grown as bytes arrive (doubling, up to the declared length): a client that declares 256
  // MiB and sends one byte costs 1 MiB, not 256.
  const want = declared === null ? undefined : Number(declared);
  let buf = new Uint8Array(Math.min(want ?? 64 * 1024, 2 ** 20));
  let len = 0;
  try {
    for (;;) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await reader.read();
      } catch (e) {
        if (late) break;
        // Bad chunked framing, a reset connection: the client's fault, not the server's.
        throw new DraftAttentionError(
          "INVALID_INPUT",
          "body",
          `could not be read: ${cut(String((e as Error)?.message ?? e))}`,
        );
      }
      if (late || step.done) break;
      const value = step.value;
      if (len + value.length > max) {
        await reader.cancel().catch(() => {});
        throw new DraftAttentionError(
          "TOO_LARGE",
          "body",
          `more than ${max} bytes were sent; the limit is ${max} (maxBodyBytes)`,
        );
      }
      if (len + value.length > buf.length) {
        const size = Math.max(buf.length * 2, len + value.length);
        const grown = new Uint8Array(
          Math.min(max, want !== undefined ? Math.max(want, len + value.length) : size, size),
        );
        grown.set(buf.subarray(0, len));
        buf = grown;
      }
      buf.set(value, len);
      len += value.length;
    }
  } finally {
    clearTimeout(timer);
  }
  if (late) {
    throw new ServeError(
      408,
      "TIMEOUT",
      "body",
      `${len} bytes arrived in ${ms} ms (bodyTimeoutMs); the whole body must arrive in that time`,
      { connection: "close" },
    );
  }
  return buf.subarray(0, len);
}

/** The limits in force, as `/health` and the serve task report them. */
export interface HandlerLimits {
  /** See {@linkcode HandlerOptions.maxBodyBytes}. */
  maxBodyBytes: number;
  /** See {@linkcode HandlerOptions.maxHeaderBytes}. */
  maxHeaderBytes: number;
  /** See {@linkcode HandlerOptions.maxTensorElements}. */
  maxTensorElements: number;
  /** See {@linkcode HandlerOptions.maxFlops}; `undefined` until the backend is known. */
  maxFlops: number | undefined;
  /** See {@linkcode HandlerOptions.timeoutMs}. */
  timeoutMs: number;
  /** See {@linkcode HandlerOptions.bodyTimeoutMs}. */
  bodyTimeoutMs: number;
  /** See {@linkcode HandlerOptions.maxUploads}. */
  maxUploads: number;
  /** See {@linkcode HandlerOptions.maxConcurrent}. */
  maxConcurrent: number;
  /** See {@linkcode HandlerOptions.maxQueue}. */
  maxQueue: number;
  /**
   * Request bytes the handler may hold at once in the worst case: every upload, queued and
   * running body at `maxBodyBytes`, and each running request's output (as large as q).
   */
  worstCaseBytes: number;
}

/**
 * Creates the handler. Pass it to `Deno.serve(handler)`, or export `{ fetch: handler }`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createHandler } from "./serve.ts";
 * const handler = createHandler({ backend: "wasm", maxConcurrent: 1 });
 * const res = await handler(new Request("http://x/health"));
 * assert.equal(res.status, 200);
 * handler.close();
 * ```
 */
export function createHandler(options: HandlerOptions = {}): AttentionHandler {
  if (typeof options !== "object" || options === null) {
    throw new DraftAttentionError("INVALID_OPTION", "options", "must be an object");
  }
  for (const key of Object.keys(options)) {
    if (!OPTION_KEYS.has(key)) {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        cut(key),
        `is not a handler option; known: ${[...OPTION_KEYS].join(", ")}`,
      );
    }
  }
  const big = Number.MAX_SAFE_INTEGER;
  const maxBody = integer("maxBodyBytes", options.maxBodyBytes, 256 * 2 ** 20, 1, big);
  const maxHeader = integer("maxHeaderBytes", options.maxHeaderBytes, 64 * 1024, 2, 100_000_000);
  const maxElements = integer("maxTensorElements", options.maxTensorElements, 2 ** 26, 1, big);
  const maxFlopsOpt = options.maxFlops === undefined
    ? undefined
    : integer("maxFlops", options.maxFlops, 0, 1, big);
  const timeoutMs = integer("timeoutMs", options.timeoutMs, 60_000, 1, 2 ** 31 - 1);
  const bodyTimeoutMs = integer("bodyTimeoutMs", options.bodyTimeoutMs, 60_000, 1, 2 ** 31 - 1);
  const maxUploads = integer("maxUploads", options.maxUploads, 16, 1, 1_000_000);
  const maxConcurrent = integer("maxConcurrent", options.maxConcurrent, 1, 1, 1024);
  const maxQueue = integer("maxQueue", options.maxQueue, 8, 0, 1_000_000);
  const threads = options.threads === undefined
    ? undefined
    : integer("threads", options.threads, 1, 1, 1024);
  const backend = options.backend ?? "auto";
  if (!["auto", "webgpu", "wasm"].includes(backend)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "backend",
      `must be "auto", "webgpu" or "wasm", got ${JSON.stringify(cut(String(backend)))}`,
    );
  }
  const token = options.token;
  if (token !== undefined && (typeof token !== "string" || token.length === 0)) {
    throw new DraftAttentionError("INVALID_OPTION", "token", "must be a non-empty string");
  }
  const hasWorker = typeof Worker === "function";
  const compute = options.compute ??
    (hasWorker && options.runtime === undefined ? "worker" : "inline");
  if (compute !== "worker" && compute !== "inline") {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "compute",
      `must be "worker" or "inline", got ${JSON.stringify(cut(String(compute)))}`,
    );
  }
  if (compute === "worker" && options.runtime !== undefined) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "compute",
      `"worker" opens its own runtime on the worker; it cannot use the given runtime`,
    );
  }
  if (compute === "worker" && !hasWorker) {
    throw new DraftAttentionError("UNSUPPORTED", "compute", `"worker": this runtime has no Worker`);
  }
  const limits: HandlerLimits = {
    maxBodyBytes: maxBody,
    maxHeaderBytes: maxHeader,
    maxTensorElements: maxElements,
    maxFlops: maxFlopsOpt,
    timeoutMs,
    bodyTimeoutMs,
    maxUploads,
    maxConcurrent,
    maxQueue,
    worstCaseBytes: (maxUploads + maxQueue + 2 * maxConcurrent) * maxBody,
  };

  const workers = compute === "worker" ? new WorkerCompute(backend, threads) : undefined;
  const owned = options.runtime === undefined;
  const cache = new OpCache(4);
  let runtime: Promise<Runtime> | undefined = options.runtime === undefined
    ? undefined
    : Promise.resolve(options.runtime);
  // A rejected promise given as the runtime is answered with 503 per request, not reported as
  // an unhandled rejection.
  runtime?.catch(() => {});
  let closed = false;

  /** The inline runtime; one the handler owns is reopened after a failure or a lost device. */
  function getRuntime(): Promise<Runtime> {
    if (closed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "server", "handler was closed"));
    }
    if (!runtime) {
      const opening = openRuntime({ backend, ...(threads === undefined ? {} : { threads }) });
      runtime = opening;
      opening.catch(() => {
        if (runtime === opening) runtime = undefined;
      });
    }
    return runtime;
  }

  function dropRuntime(e: unknown): void {
    if (!owned || !(e instanceof DraftAttentionError)) return;
    if (e.code !== "DEVICE_LOST" && e.code !== "DISPOSED") return;
    const old = runtime;
    runtime = undefined;
    cache.clear();
    old?.then((rt) => rt.dispose(), () => {});
  }

  /** What computes: the worker's backend, or the inline runtime's. */
  async function backendInfo(): Promise<BackendInfo> {
    if (closed) throw new DraftAttentionError("DISPOSED", "server", "handler was closed");
    if (workers) return workers.info ?? await workers.ready();
    return (await getRuntime()).describe();
  }

  function flopBudget(info: BackendInfo): number {
    return maxFlopsOpt ?? (info.backend === "webgpu" ? 2 ** 46 : 2 ** 38);
  }

  // `request.signal` misses clients that close after sending a body (src/_serve_conn.ts).
  const watcher = new ConnectionWatcher();
  let uploading = 0;
  let admitted = 0;
  let running = 0;
  const waiting: (() => void)[] = [];
  const acquire = (signal: AbortSignal): Promise<void> => {
    if (signal.aborted) return Promise.reject(aborted());
    if (running < maxConcurrent) {
      running++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const wake = () => {
        signal.removeEventListener("abort", gone);
        resolve();
      };
      const gone = () => {
        const i = waiting.indexOf(wake);
        if (i >= 0) waiting.splice(i, 1);
        reject(aborted());
      };
      waiting.push(wake);
      signal.addEventListener("abort", gone, { once: true });
    });
  };
  const release = (): void => {
    const next = waiting.shift();
    if (next) next();
    else running--;
  };

  async function health(): Promise<Response> {
    try {
      const info = await backendInfo();
      return json(200, {
        status: "ok",
        backend: info,
        compute,
        limits: { ...limits, maxFlops: flopBudget(info) },
        load: { uploading, running, queued: admitted - running, admitted },
      });
    } catch (e) {
      return errorResponse(e);
    }
  }

  function aborted(): ServeError {
    return new ServeError(499, "ABORTED", "request", "the client closed the request");
  }

  function busy(what: string): ServeError {
    return new ServeError(429, "BUSY", "server", what, { "retry-after": "1" });
  }

  async function attention(request: Request, signal: AbortSignal): Promise<Response> {
    try {
      checkAdmission(request);
    } catch (e) {
      // A body refused before reading is dropped, so that the client is not kept sending. Only
      // then: cancelling a body already read holds memory in Deno (+6% RSS over the 2,000
      // requests of test/load_test.ts).
      await request.body?.cancel().catch(() => {});
      throw e;
    }
    uploading++;
    let bytes: Uint8Array;
    try {
      bytes = await readBody(request, maxBody, bodyTimeoutMs);
    } finally {
      uploading--;
    }
    return await answer(bytes, signal);
  }

  /** Token, content type and an upload slot: what is checked before a byte of the body. */
  function checkAdmission(request: Request): void {
    if (token !== undefined) {
      const auth = request.headers.get("authorization") ?? "";
      const m = /^Bearer\s+(.+)$/i.exec(auth);
      if (!m || !sameToken(m[1].trim(), token)) {
        throw new ServeError(
          401,
          "UNAUTHORIZED",
          "authorization",
          "send Authorization: Bearer <token>",
          { "www-authenticate": 'Bearer realm="draftattn"' },
        );
      }
    }
    // A POST a web page can send without a CORS preflight (text/plain, forms) never computes.
    const type = (request.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
    if (!MEDIA_TYPES.has(type)) {
      throw new ServeError(
        415,
        "MEDIA_TYPE",
        "content-type",
        `must be application/octet-stream or application/x-safetensors, got ${
          type ? JSON.stringify(cut(type)) : "none"
        }`,
      );
    }
    // Receiving takes an upload slot, bounded in number and in time, not a compute slot: slow
    // senders cannot keep complete requests from being admitted.
    if (uploading >= maxUploads) {
      throw busy(`${uploading} bodies are being received; the limit is ${maxUploads}`);
    }
  }

  async function answer(bytes: Uint8Array, signal: AbortSignal): Promise<Response> {
    checkHeader(bytes, { maxHeaderBytes: maxHeader, maxTensorElements: maxElements });
    const file = parseSafetensors(bytes, { name: "body", maxHeaderBytes: maxHeader });
    bytes = new Uint8Array(0); // the tensors are copies: let the body go
    const { q, k, v } = file.tensors;
    const req = buildRequest({ fields: file.metadata, q, k, v });
    const info = await backendInfo();
    const budget = flopBudget(info);
    const tokens = q.shape[req.options.layout === "BHSD" ? 2 : 1];
    const flops = estimateFlops(req, tokens);
    if (flops > budget) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "flops",
        `the request needs about ${
          flops.toExponential(2)
        } FLOPs (${req.mode}, ${tokens} tokens); ` +
          `the budget is ${budget.toExponential(2)} (maxFlops)`,
      );
    }
    if (admitted >= maxConcurrent + maxQueue) {
      throw busy(
        `${running} requests running and ${
          admitted - running
        } queued; the limit is ${maxConcurrent} + ${maxQueue}`,
      );
    }
    admitted++;
    let result;
    try {
      const waits = running >= maxConcurrent;
      await acquire(signal);
      try {
        // A client that left while this request waited is not computed for (an inline run
        // blocks the watcher's timer while it runs, and cannot be stopped once started).
        if (waits) watcher.poll();
        if (signal.aborted) throw aborted();
        if (workers) {
          result = await workers.run({ request: req, q, k, v, signal, timeoutMs });
        } else {
          const rt = await getRuntime();
          try {
            result = await runRequest({ runtime: rt, request: req, q, k, v, cache });
          } catch (e) {
            dropRuntime(e);
            throw e;
          }
        }
      } finally {
        release();
      }
    } finally {
      admitted--;
    }
    const out: Tensor = { dtype: q.dtype, shape: q.shape, data: result.out };
    const metadata: Record<string, string> = {
      backend: result.backend,
      mode: req.mode,
      ms: result.ms.toFixed(3),
    };
    if (result.density !== undefined) metadata.density = String(result.density);
    if (result.g !== undefined) metadata.g = String(result.g);
    return new Response(encodeSafetensors({ tensors: { out }, metadata }), {
      headers: { "content-type": "application/octet-stream" },
    });
  }

  const handler = async (
    request: Request,
    info?: { remoteAddr?: unknown },
  ): Promise<Response> => {
    const path = new URL(request.url).pathname;
    if (path === "/health") {
      if (request.method === "GET" || request.method === "HEAD") return await health();
      return errorJson(405, "METHOD", "method", "use GET for /health", { allow: "GET, HEAD" });
    }
    if (request.method !== "POST") {
      return errorJson(
        405,
        "METHOD",
        "method",
        `use POST with a .safetensors body, got ${cut(request.method)}`,
        { allow: "POST" },
      );
    }
    const watch = watcher.watch(info?.remoteAddr, request.signal);
    try {
      return await attention(request, watch.signal);
    } catch (e) {
      return errorResponse(e);
    } finally {
      watch.stop();
    }
  };
  return Object.assign(handler, {
    close(): void {
      if (closed) return;
      closed = true;
      cache.clear();
      watcher.close();
      workers?.close();
      if (owned) runtime?.then((rt) => rt.dispose(), () => {});
      runtime = undefined;
    },
  });
}

/** Parses the flags of `deno task serve`; throws `INVALID_OPTION` naming a bad flag. */
export function serveFlags(args: string[]): {
  help: boolean;
  port: number;
  hostname: string;
  options: HandlerOptions;
} {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string" },
        hostname: { type: "string", default: "127.0.0.1" },
        backend: { type: "string", default: "auto" },
        compute: { type: "string" },
        threads: { type: "string" },
        token: { type: "string" },
        "max-body-bytes": { type: "string" },
        "max-header-bytes": { type: "string" },
        "max-tensor-elements": { type: "string" },
        "max-flops": { type: "string" },
        "timeout-ms": { type: "string" },
        "body-timeout-ms": { type: "string" },
        "max-uploads": { type: "string" },
        "max-concurrent": { type: "string" },
        "max-queue": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    throw new DraftAttentionError("INVALID_OPTION", "flags", (e as Error).message);
  }
  /** An integer flag: digits, or a float form such as 2e12 that is an exact integer. */
  const num = (flag: string): number | undefined => {
    const s = (values as unknown as Record<string, string | undefined>)[flag];
    if (s === undefined) return undefined;
    const n = /^\d+(\.\d+)?([eE]\+?\d+)?$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(n)) {
      throw new DraftAttentionError(
        "INVALID_OPTION",
        `--${flag}`,
        `must be a non-negative integer, got ${JSON.stringify(cut(s))}`,
      );
    }
    return n;
  };
  const port = num("port") ?? (Deno.env.get("PORT") ? Number(Deno.env.get("PORT")) : 8787);
  if (!Number.isSafeInteger(port) || port < 0 || port > 65535) {
    throw new DraftAttentionError("INVALID_OPTION", "--port", `must be in [0, 65535], got ${port}`);
  }
  const options: HandlerOptions = {
    backend: values.backend as "auto",
    compute: values.compute as "worker" | undefined,
    threads: num("threads"),
    // A token from the environment stays out of `ps`.
    token: values.token ?? (Deno.env.get("DRAFTATTN_TOKEN") || undefined),
    maxBodyBytes: num("max-body-bytes"),
    maxHeaderBytes: num("max-header-bytes"),
    maxTensorElements: num("max-tensor-elements"),
    maxFlops: num("max-flops"),
    timeoutMs: num("timeout-ms"),
    bodyTimeoutMs: num("body-timeout-ms"),
    maxUploads: num("max-uploads"),
    maxConcurrent: num("max-concurrent"),
    maxQueue: num("max-queue"),
  };
  for (const [k, v] of Object.entries(options)) {
    if (v === undefined) delete (options as Record<string, unknown>)[k];
  }
  return { help: values.help ?? false, port, hostname: values.hostname, options };
}

const USAGE =
  `usage: deno task serve [--port 8787] [--hostname 127.0.0.1] [--backend auto|webgpu|wasm]
  [--token T (or DRAFTATTN_TOKEN)] [--compute worker|inline] [--threads N]
  [--max-body-bytes N] [--max-header-bytes N] [--max-tensor-elements N] [--max-flops N]
  [--timeout-ms N] [--body-timeout-ms N] [--max-uploads N] [--max-concurrent N] [--max-queue N]
POST a .safetensors body (q, k, v; request in __metadata__) with
Content-Type: application/octet-stream; GET /health. docs/serve.md explains each limit.`;

if (import.meta.main) {
  let flags;
  try {
    flags = serveFlags(Deno.args);
  } catch (e) {
    console.error(`draftattn serve: ${(e as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  if (flags.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    const handler = createHandler(flags.options);
    // Opens the backend now, so that a missing one is reported at start, not per request.
    const health = await (await handler(new Request("http://x/health"))).json();
    if (health.error) throw new Error(health.error.message);
    const l = health.limits;
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
    if (!/^(127\.|::1$|localhost$)/.test(flags.hostname) && !flags.options.token) {
      console.error(
        `draftattn serve: listening on ${flags.hostname} without a token: anyone who can reach ` +
          "it can start compute (set DRAFTATTN_TOKEN)",
      );
    }
    Deno.serve({
      port: flags.port,
      hostname: flags.hostname,
      onListen: ({ hostname, port }) =>
        console.error(
          `draftattn serve: http://${hostname}:${port} on ${health.backend.backend} ` +
            `(${health.backend.adapter}; ${health.compute}); body <= ${mib(l.maxBodyBytes)}, ` +
            `${l.maxUploads} uploads + ${l.maxQueue} queued + ${l.maxConcurrent} running: ` +
            `request memory up to ${mib(l.worstCaseBytes)} plus each run's working set; ` +
            `at most ${l.maxFlops.toExponential(1)} FLOPs per request` +
            (flags.options.token ? "; bearer token required" : ""),
        ),
    }, handler);
  } catch (e) {
    console.error(`draftattn serve: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
