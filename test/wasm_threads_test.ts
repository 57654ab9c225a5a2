// The WebAssembly backend on worker threads: outputs and masks bit-identical to one thread on
// every conformance case, the `threads` option, failing and dying workers, disposal, and a
// process that exits with workers still started.
import assert from "node:assert/strict";
import { openRuntime } from "../mod.ts";
import { DraftAttentionError } from "../src/errors.ts";
import { buildPlan } from "../src/plan.ts";
import type { Backend, DenseSpec, DraftSpec, TensorArray } from "../src/types.ts";
import { resolveDense, resolveDraft } from "../src/validate.ts";
import { createWasmBackend } from "../src/wasm/backend.ts";
import type { WorkerPool } from "../src/wasm/pool.ts";
import { DENSE_CASES, denseOptions, DRAFT_CASES, draftOptions } from "./_cases.ts";
import { allocTensor, Rng } from "./reference.ts";

function inputs(spec: DenseSpec, seed: number): TensorArray[] {
  const rng = new Rng(seed);
  const n = spec.batch * spec.tokens * spec.heads * spec.headDim;
  return [0, 1, 2].map(() => {
    const x = allocTensor(spec.dtype, n);
    for (let i = 0; i < n; i++) x[i] = 2 * rng.normal();
    return x;
  });
}

/** Three threads, workers even for the smallest op: more threads than this machine's cores. */
function threaded(extra: Record<string, unknown> = {}): Backend {
  return createWasmBackend("test", { threads: 3, minParallelFlops: 0, ...extra });
}

function poolOf(backend: Backend): WorkerPool | undefined {
  return (backend as unknown as { livePool: WorkerPool | undefined }).livePool;
}

function isCode(code: string) {
  return (e: unknown) => e instanceof DraftAttentionError && e.code === code;
}

const DRAFT_SPECS = DRAFT_CASES.map((c) => resolveDraft(draftOptions(c)));

Deno.test("wasm threads: bit-identical to one thread on every conformance case", async () => {
  const one = createWasmBackend("test", { threads: 1 });
  const three = threaded();
  try {
    for (const c of DENSE_CASES) {
      const spec = resolveDense(denseOptions(c));
      const [q, k, v] = inputs(spec, c.seed);
      const want = await one.dense(spec).run(q, k, v);
      const got = await three.dense(spec).run(q, k, v);
      assert.deepEqual(got, want, c.name);
    }
    for (const [i, spec] of DRAFT_SPECS.entries()) {
      const plan = buildPlan(spec);
      const [q, k, v] = inputs(spec, DRAFT_CASES[i].seed);
      const a = one.draft(spec, plan);
      const b = three.draft(spec, plan);
      assert.deepEqual(await b.run(q, k, v), await a.run(q, k, v), DRAFT_CASES[i].name);
      assert.deepEqual(await b.lastMask(), await a.lastMask(), DRAFT_CASES[i].name);
    }
    assert.ok(poolOf(three), "the runs used workers");
    assert.equal(poolOf(one), undefined);
  } finally {
    one.dispose();
    three.dispose();
  }
});

Deno.test("wasm threads: heads in groups and one head at a time when memory is short", async () => {
  const spec: DraftSpec = resolveDraft({
    frames: 2,
    height: 16,
    width: 32,
    textTokens: 130,
    heads: 4,
    headDim: 32,
    batch: 2,
    layout: "BHSD",
    sparsity: 0.75,
  });
  const plan = buildPlan(spec);
  const [q, k, v] = inputs(spec, 5);
  const one = createWasmBackend("test", { threads: 1 });
  const want = await one.draft(spec, plan).run(q, k, v);
  // ~3.9 MB for all four heads at once, ~2.4 MB for two, ~1.2 MB staged one head at a time.
  for (const memoryLimit of [3e6, 2e6]) {
    const be = threaded({ memoryLimit });
    assert.deepEqual(await be.draft(spec, plan).run(q, k, v), want, `limit ${memoryLimit}`);
    be.dispose();
  }
  one.dispose();
});

Deno.test("wasm threads: concurrent runs on one backend queue up", async () => {
  const be = threaded();
  const spec = resolveDense({ tokens: 300, heads: 2, headDim: 16 });
  const runs = [1, 2, 3].map((seed) => inputs(spec, seed));
  const op = be.dense(spec);
  const serial: TensorArray[] = [];
  for (const [q, k, v] of runs) serial.push(await op.run(q, k, v));
  const together = await Promise.all(runs.map(([q, k, v]) => op.run(q, k, v)));
  assert.deepEqual(together, serial);
  be.dispose();
});

Deno.test("wasm threads: the threads option", async () => {
  for (const threads of [0, 1.5, NaN, -1, "2", 1025]) {
    await assert.rejects(
      openRuntime({ backend: "wasm", threads: threads as number }),
      (e) => isCode("INVALID_OPTION")(e) && (e as DraftAttentionError).field === "threads",
      String(threads),
    );
  }
  const rt1 = await openRuntime({ backend: "wasm", threads: 1 });
  assert.equal(rt1.describe().threads, 1);
  assert.deepEqual(rt1.describe().features, ["simd", "relaxed-simd"]);
  rt1.dispose();
  const rt2 = await openRuntime({ backend: "wasm", threads: 2 });
  assert.equal(rt2.describe().threads, 2);
  assert.ok(rt2.describe().features.includes("threads"));
  rt2.dispose();
  const rt = await openRuntime({ backend: "wasm" });
  assert.equal(rt.describe().threads, navigator.hardwareConcurrency);
  rt.dispose();
});

Deno.test("wasm threads: a trap or a death in a worker rejects with WORKER_ERROR, never hangs", async () => {
  const be = threaded();
  const spec = resolveDense({ tokens: 700, heads: 3, headDim: 32 });
  const [q, k, v] = inputs(spec, 9);
  const op = be.dense(spec);
  const want = await op.run(q, k, v);
  for (const [what, worker] of [["fault", 1], ["crash", 2]] as const) {
    const pool = poolOf(be)!;
    pool.inject(worker, what);
    if (what === "crash") {
      // The worker throws an uncaught error and dies while idle: the next run notices.
      for (let i = 0; i < 200 && !pool.broken; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(pool.broken, "the pool saw the death");
    } else {
      await assert.rejects(op.run(q, k, v), isCode("WORKER_ERROR"), what);
    }
    // A new pool takes over: the next run is right again.
    assert.deepEqual(await op.run(q, k, v), want, `after ${what}`);
    assert.notEqual(poolOf(be), pool);
  }
  be.dispose();
});

Deno.test("wasm threads: a worker dying in the middle of a run rejects the run", async () => {
  const be = threaded();
  const spec = resolveDense({ tokens: 700, heads: 3, headDim: 32 });
  const [q, k, v] = inputs(spec, 9);
  const op = be.dense(spec);
  await op.run(q, k, v);
  poolOf(be)!.inject(1, "die");
  await assert.rejects(op.run(q, k, v), isCode("WORKER_ERROR"));
  await op.run(q, k, v);
  be.dispose();
});

Deno.test("wasm threads: dispose rejects queued runs with DISPOSED", async () => {
  const be = threaded();
  const spec = resolveDense({ tokens: 700, heads: 3, headDim: 32 });
  const [q, k, v] = inputs(spec, 9);
  const op = be.dense(spec);
  await op.run(q, k, v);
  const queued = op.run(q, k, v);
  be.dispose();
  await assert.rejects(queued, isCode("DISPOSED"));
  assert.equal(poolOf(be), undefined);
});

Deno.test("wasm threads: started workers keep no process alive, disposed or not", async () => {
  const url = new URL("../src/wasm/backend.ts", import.meta.url).href;
  const script = `
    import { createWasmBackend } from ${JSON.stringify(url)};
    const spec = { batch: 1, tokens: 500, heads: 2, headDim: 32, layout: "BSHD", dtype: "f32", scale: 0.2 };
    const x = new Float32Array(500 * 2 * 32).fill(0.5);
    const a = createWasmBackend("a", { threads: 2, minParallelFlops: 0 });
    await a.dense(spec).run(x, x, x);
    a.dispose();
    const b = createWasmBackend("b", { threads: 2, minParallelFlops: 0, idleMs: 300 });
    await b.dense(spec).run(x, x, x);
    console.log(b.info().threads, "done");
  `;
  const t0 = performance.now();
  const child = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20000),
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const out = new TextDecoder().decode(child.stdout) + new TextDecoder().decode(child.stderr);
  assert.equal(child.code, 0, out);
  assert.match(out, /2 done/);
  assert.ok(seconds < 15, `the process took ${seconds} s to end`);
});
