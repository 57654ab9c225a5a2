/**
 * The edge handler's compute worker (src/_serve_compute.ts starts it): opens its own runtime,
 * then runs one request at a time and posts the output back. Running here keeps the server's
 * event loop free (`/health`, 429s and new uploads answer while a big request computes), and a
 * request that is cancelled or runs past its time is stopped by terminating this worker.
 *
 * Messages in: `{ type: "init", backend, threads }`, then `{ type: "run", id, request, q, k, v }`
 * (the tensors' buffers transferred). Out: `{ type: "ready", info }` or `{ type: "failed",
 * error }` once, then `{ type: "done", id, result }` or `{ type: "failed", id, error }` per run,
 * and `{ type: "control", ctl }` (a shared buffer) for each WebAssembly worker pool started.
 *
 * @module
 */
import { DraftAttentionError } from "./errors.ts";
import { openRuntime, type Runtime } from "./runtime.ts";
import { type AttentionRequest, OpCache, runRequest } from "./_request.ts";
import type { Tensor } from "./_tensor.ts";
import type { BackendKind } from "./types.ts";

interface Scope {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
  close(): void;
}
const scope = globalThis as unknown as Scope;

/**
 * The control words of every WebAssembly worker pool started here, passed on to the server.
 * With Deno 2.9.6, `worker.terminate()` takes effect only when the worker returns to its event
 * loop (a worker in a long synchronous loop keeps its core: measured, a run aborted 200 ms in
 * went on for its remaining 3.3 s on both cores). A run returns to the event loop only between
 * phases, and one phase can be nearly the whole run. The pool's threads check the abort word
 * (src/wasm/pool.ts) before each item, so the server sets it, then terminates this worker: the
 * phase ends after the items in hand and the worker stops at its next wait.
 */
const NativeWorker = globalThis.Worker;
class PoolWorker extends NativeWorker {
  override postMessage(message: unknown, options?: unknown): void {
    const m = message as { type?: unknown; ctl?: unknown } | null;
    if (m?.type === "init" && m.ctl instanceof SharedArrayBuffer) {
      scope.postMessage({ type: "control", ctl: m.ctl });
    }
    super.postMessage(message, options as StructuredSerializeOptions);
  }
}
globalThis.Worker = PoolWorker;

/** An error as plain data (a `DraftAttentionError` keeps its code and field). */
function plain(e: unknown): { code: string; field: string; message: string } {
  if (e instanceof DraftAttentionError) return { code: e.code, field: e.field, message: e.message };
  return { code: "INTERNAL", field: "server", message: String((e as Error)?.message ?? e) };
}

let runtime: Promise<Runtime> | undefined;

/**
 * One small threaded run before the first request: a fresh worker compiles the WebAssembly and
 * warms its JIT, which cost the first request ~1 s more than later ones (dense 8,192 x 64:
 * 1,441 ms, then 375 ms). Dense 512 x 64 (2^26 FLOPs) is above the backend's threshold for
 * threads, so the pool's path is warmed too.
 */
async function warmUp(rt: Runtime): Promise<void> {
  const op = rt.attention({ tokens: 512, heads: 1, headDim: 64 });
  try {
    const x = new Float32Array(512 * 64).fill(0.25);
    await op.run(x, x, x);
  } finally {
    op.dispose();
  }
}
const cache = new OpCache(4);

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data;
  if (m.type === "init") {
    runtime = openRuntime({
      backend: m.backend as "auto" | BackendKind,
      ...(m.threads === undefined ? {} : { threads: m.threads }),
    });
    try {
      const rt = await runtime;
      if (rt.backend === "wasm") await warmUp(rt);
      scope.postMessage({ type: "ready", info: rt.describe() });
    } catch (err) {
      scope.postMessage({ type: "failed", error: plain(err) });
    }
    return;
  }
  if (m.type !== "run") return;
  try {
    const rt = await runtime!;
    const [q, k, v] = m.tensors as [Tensor, Tensor, Tensor];
    const result = await runRequest({
      runtime: rt,
      request: m.request as AttentionRequest,
      q,
      k,
      v,
      cache,
    });
    scope.postMessage({ type: "done", id: m.id, result }, [result.out.buffer as ArrayBuffer]);
  } catch (err) {
    scope.postMessage({ type: "failed", id: m.id, error: plain(err) });
  }
};
