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
 * Answers: 200 with the output; 400 `{ error: { code, field, message } }` for a malformed
 * request; 405 for other methods; 413 for a body or tensor over the limits (checked from
 * `Content-Length` before reading, and again while streaming); 429 when `maxConcurrent`
 * requests run and `maxQueue` more wait; 503 when no backend can be opened or the device was
 * lost. `GET /health` answers 200 with the backend description.
 *
 * Run it with `deno task serve [--port 8787] [--hostname 127.0.0.1] [--backend auto]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DraftAttentionError } from "./errors.ts";
import { openRuntime, type Runtime } from "./runtime.ts";
import { encodeSafetensors, parseSafetensors } from "./safetensors.ts";
import { buildRequest, OpCache, runRequest } from "./_request.ts";
import type { Tensor } from "./_tensor.ts";
import type { BackendKind } from "./types.ts";

/** Options of {@linkcode createHandler}. */
export interface HandlerOptions {
  /** A runtime to use (the caller keeps ownership); by default one is opened on first use. */
  runtime?: Runtime | Promise<Runtime>;
  /** Backend of the runtime the handler opens itself; default `"auto"`. */
  backend?: "auto" | BackendKind;
  /** Largest request body; default 256 MiB. */
  maxBodyBytes?: number;
  /** Largest element count of each of q, k, v; default 2^26 (256 MiB of f32). */
  maxTensorElements?: number;
  /** Requests computing at once; default 1 (one device, one queue). */
  maxConcurrent?: number;
  /** Requests admitted beyond those computing (uploading or waiting); default 8. */
  maxQueue?: number;
}

/** A `fetch`-style handler with a `close()` that frees its ops and the runtime it opened. */
export interface AttentionHandler {
  (request: Request): Promise<Response>;
  /** Disposes cached ops and, when the handler opened it, the runtime. */
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

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorResponse(e: unknown, headers: Record<string, string> = {}): Response {
  if (e instanceof DraftAttentionError) {
    return json(STATUS[e.code] ?? 500, {
      error: { code: e.code, field: e.field, message: e.message },
    }, headers);
  }
  return json(500, {
    error: { code: "INTERNAL", field: "server", message: String((e as Error)?.message ?? e) },
  });
}

function positive(field: string, value: number | undefined, def: number, min = 1): number {
  const v = value ?? def;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be an integer >= ${min}, got ${v}`,
    );
  }
  return v;
}

/** Reads at most `max` bytes of a body: `Content-Length` checked first, the stream capped. */
async function readBody(request: Request, max: number): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  let size = 64 * 1024;
  if (declared !== null) {
    if (!/^\d{1,15}$/.test(declared)) {
      throw new DraftAttentionError("INVALID_INPUT", "content-length", `got "${declared}"`);
    }
    if (Number(declared) > max) {
      throw new DraftAttentionError(
        "TOO_LARGE",
        "body",
        `Content-Length ${declared} exceeds the limit of ${max} bytes`,
      );
    }
    size = Number(declared);
  }
  if (request.body === null) return new Uint8Array(0);
  let buf = new Uint8Array(Math.min(size, max));
  let len = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (len + value.length > max) {
      await reader.cancel().catch(() => {});
      throw new DraftAttentionError(
        "TOO_LARGE",
        "body",
        `more than ${max} bytes were sent; the limit is ${max}`,
      );
    }
    if (len + value.length > buf.length) {
      const grown = new Uint8Array(Math.min(max, Math.max(buf.length * 2, len + value.length)));
      grown.set(buf.subarray(0, len));
      buf = grown;
    }
    buf.set(value, len);
    len += value.length;
  }
  return buf.subarray(0, len);
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
  const maxBody = positive("maxBodyBytes", options.maxBodyBytes, 256 * 2 ** 20);
  const maxElements = positive("maxTensorElements", options.maxTensorElements, 2 ** 26);
  const maxConcurrent = positive("maxConcurrent", options.maxConcurrent, 1);
  const maxQueue = positive("maxQueue", options.maxQueue, 8, 0);
  const backend = options.backend ?? "auto";
  const owned = options.runtime === undefined;
  const cache = new OpCache(4);
  let runtime: Promise<Runtime> | undefined = options.runtime === undefined
    ? undefined
    : Promise.resolve(options.runtime);
  // A rejected promise given as the runtime is answered with 503 per request, not reported as
  // an unhandled rejection.
  runtime?.catch(() => {});
  let closed = false;

  /** The runtime; one the handler owns is reopened after a failure or a lost device. */
  function getRuntime(): Promise<Runtime> {
    if (closed) {
      return Promise.reject(new DraftAttentionError("DISPOSED", "server", "handler was closed"));
    }
    if (!runtime) {
      const opening = openRuntime({ backend });
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

  let admitted = 0;
  let running = 0;
  const waiting: (() => void)[] = [];
  const acquire = (): Promise<void> => {
    if (running < maxConcurrent) {
      running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => waiting.push(resolve));
  };
  const release = (): void => {
    const next = waiting.shift();
    if (next) next();
    else running--;
  };

  async function health(): Promise<Response> {
    try {
      const rt = await getRuntime();
      return json(200, {
        status: "ok",
        backend: rt.describe(),
        limits: { maxBodyBytes: maxBody, maxTensorElements: maxElements, maxConcurrent, maxQueue },
        load: { running, admitted },
      });
    } catch (e) {
      return errorResponse(e);
    }
  }

  async function attention(request: Request): Promise<Response> {
    const body = await readBody(request, maxBody);
    const file = parseSafetensors(body, { name: "body" });
    const names = Object.keys(file.tensors).sort().join(", ");
    if (names !== "k, q, v") {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        "body",
        `must hold exactly the tensors q, k, v; got ${names || "none"}`,
      );
    }
    const { q, k, v } = file.tensors;
    for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
      if (t.data.length > maxElements) {
        throw new DraftAttentionError(
          "TOO_LARGE",
          name,
          `${t.data.length} elements exceed the limit of ${maxElements}`,
        );
      }
    }
    const req = buildRequest({ fields: file.metadata, q, k, v });
    const rt = await getRuntime();
    await acquire();
    let result;
    try {
      result = await runRequest({ runtime: rt, request: req, q, k, v, cache });
    } catch (e) {
      dropRuntime(e);
      throw e;
    } finally {
      release();
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

  const handler = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    if (path === "/health") {
      if (request.method === "GET" || request.method === "HEAD") return await health();
      return json(405, {
        error: { code: "METHOD", field: "method", message: `use GET for /health` },
      }, { allow: "GET, HEAD" });
    }
    if (request.method !== "POST") {
      return json(405, {
        error: {
          code: "METHOD",
          field: "method",
          message: `use POST with a .safetensors body, got ${request.method}`,
        },
      }, { allow: "POST" });
    }
    // Admission happens before the body is read, so at most maxConcurrent + maxQueue bodies
    // are held in memory at once.
    if (admitted >= maxConcurrent + maxQueue) {
      await request.body?.cancel().catch(() => {});
      return json(429, {
        error: {
          code: "BUSY",
          field: "server",
          message: `${running} requests running and ${
            admitted - running
          } queued; the limit is ${maxConcurrent} + ${maxQueue}`,
        },
      }, { "retry-after": "1" });
    }
    admitted++;
    try {
      return await attention(request);
    } catch (e) {
      return errorResponse(e);
    } finally {
      admitted--;
    }
  };
  return Object.assign(handler, {
    close(): void {
      if (closed) return;
      closed = true;
      cache.clear();
      if (owned) runtime?.then((rt) => rt.dispose(), () => {});
      runtime = undefined;
    },
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string" },
      hostname: { type: "string", default: "0.0.0.0" },
      backend: { type: "string", default: "auto" },
      "max-body-bytes": { type: "string" },
      "max-concurrent": { type: "string" },
      "max-queue": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno task serve [--port 8787] [--hostname 0.0.0.0] [--backend auto|webgpu|wasm]\n" +
        "                       [--max-body-bytes N] [--max-concurrent N] [--max-queue N]\n" +
        "POST a .safetensors body (q, k, v; request in __metadata__); GET /health.",
    );
    Deno.exit(0);
  }
  const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));
  const port = Number(values.port ?? Deno.env.get("PORT") ?? 8787);
  try {
    const runtime = await openRuntime({ backend: values.backend as "auto" });
    const info = runtime.describe();
    const handler = createHandler({
      runtime,
      maxBodyBytes: num(values["max-body-bytes"]),
      maxConcurrent: num(values["max-concurrent"]),
      maxQueue: num(values["max-queue"]),
    });
    Deno.serve({
      port,
      hostname: values.hostname,
      onListen: ({ hostname, port }) =>
        console.error(
          `draftattn serve: http://${hostname}:${port} on ${info.backend} (${info.adapter}; ${info.reason})`,
        ),
    }, handler);
  } catch (e) {
    console.error(`draftattn serve: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
