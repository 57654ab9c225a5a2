/**
 * Malformed calls through the public API. Each one must give a `DraftAttentionError` with the
 * exact `code` and `field`, and a message that names the offending value. Construction errors
 * are thrown synchronously by `attention()` / `draftAttention()`; `run()`, `lastMask()` and
 * `openRuntime()` reject. Calls that need a backend run on WebAssembly, and GPU-specific ones
 * (caller-owned `GPUBuffer`s) on WebGPU, under the same missing-GPU policy as the conformance
 * suite.
 */
import assert from "node:assert/strict";
import {
  DraftAttentionError,
  type DraftAttentionErrorCode,
  openRuntime,
  type Runtime,
} from "../mod.ts";
import type { AttentionOptions, DraftAttentionOptions } from "../src/types.ts";
import { type Availability, gpuMissing, reasonOf } from "./_cases.ts";

/** What the error must say: code, field, and a substring of the message naming the value. */
interface Want {
  code: DraftAttentionErrorCode;
  field: string;
  /** Text the message must contain (the value as the library prints it). */
  names: string;
}

function check(e: unknown, want: Want, what: string): void {
  assert.ok(
    e instanceof DraftAttentionError,
    `${what}: expected a DraftAttentionError, got ${reasonOf(e)}`,
  );
  assert.equal(e.code, want.code, `${what}: code (message: ${e.message})`);
  assert.equal(e.field, want.field, `${what}: field (message: ${e.message})`);
  assert.ok(
    e.message.includes(want.names),
    `${what}: message ${JSON.stringify(e.message)} does not name ${want.names}`,
  );
}

/** The call must throw synchronously (not return a rejected promise). */
function expectThrow(fn: () => unknown, want: Want, what: string): void {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    check(e, want, what);
    return;
  }
  if (result instanceof Promise) result.catch(() => {});
  assert.fail(`${what}: expected a synchronous ${want.code} error, got ${String(result)}`);
}

/** The call must return a promise that rejects (not throw synchronously). */
async function expectReject(fn: () => unknown, want: Want, what: string): Promise<void> {
  let p: unknown;
  try {
    p = fn();
  } catch (e) {
    assert.fail(`${what}: threw synchronously (${reasonOf(e)}); expected a rejected promise`);
  }
  assert.ok(p instanceof Promise, `${what}: expected a promise`);
  try {
    await p;
  } catch (e) {
    check(e, want, what);
    return;
  }
  assert.fail(`${what}: expected a rejection with ${want.code}`);
}

// ---------------------------------------------------------------------------------------------
// Construction: attention() and draftAttention() options
// ---------------------------------------------------------------------------------------------

const DENSE: AttentionOptions = { tokens: 65, heads: 2, headDim: 32 };
const DRAFT: DraftAttentionOptions = { frames: 2, height: 13, width: 21, heads: 2, headDim: 32 };

/** `[what, options override, code, field, names]`; `names` is the value as printed. */
const DENSE_OPTION_CASES: [
  string,
  Record<string, unknown>,
  DraftAttentionErrorCode,
  string,
  string,
][] = [
  ["tokens 0", { tokens: 0 }, "INVALID_OPTION", "tokens", "got 0"],
  ["tokens negative", { tokens: -5 }, "INVALID_OPTION", "tokens", "got -5"],
  ["tokens fractional", { tokens: 1.5 }, "INVALID_OPTION", "tokens", "got 1.5"],
  ["tokens a string", { tokens: "65" }, "INVALID_OPTION", "tokens", `got "65"`],
  ["tokens beyond int32", { tokens: 2 ** 31 }, "INVALID_OPTION", "tokens", `got ${2 ** 31}`],
  ["heads NaN", { heads: NaN }, "INVALID_OPTION", "heads", "got NaN"],
  ["heads Infinity", { heads: Infinity }, "INVALID_OPTION", "heads", "got Infinity"],
  ["batch 0", { batch: 0 }, "INVALID_OPTION", "batch", "got 0"],
  ["headDim 3 (not a multiple of 4)", { headDim: 3 }, "UNSUPPORTED", "headDim", "got 3"],
  ["headDim 260 (above 256)", { headDim: 260 }, "UNSUPPORTED", "headDim", "got 260"],
  ["headDim 0", { headDim: 0 }, "INVALID_OPTION", "headDim", "got 0"],
  ["dtype bf16", { dtype: "bf16" }, "UNSUPPORTED", "dtype", `got "bf16"`],
  ["dtype a number", { dtype: 16 }, "INVALID_OPTION", "dtype", "got 16"],
  ["layout BHDS", { layout: "BHDS" }, "UNSUPPORTED", "layout", `got "BHDS"`],
  ["scale 0", { scale: 0 }, "INVALID_OPTION", "scale", "got 0"],
  ["scale NaN", { scale: NaN }, "INVALID_OPTION", "scale", "got NaN"],
  ["scale negative", { scale: -0.125 }, "INVALID_OPTION", "scale", "got -0.125"],
  [
    "huge tensor",
    { tokens: 1_000_000, heads: 1_000_000, headDim: 256 },
    "TOO_LARGE",
    "tokens",
    "256000000000000",
  ],
];

const DRAFT_OPTION_CASES: [
  string,
  Record<string, unknown>,
  DraftAttentionErrorCode,
  string,
  string,
][] = [
  ["frames 0", { frames: 0 }, "INVALID_OPTION", "frames", "got 0"],
  ["height negative", { height: -1 }, "INVALID_OPTION", "height", "got -1"],
  ["width fractional", { width: 2.5 }, "INVALID_OPTION", "width", "got 2.5"],
  ["width NaN", { width: NaN }, "INVALID_OPTION", "width", "got NaN"],
  ["textTokens negative", { textTokens: -1 }, "INVALID_OPTION", "textTokens", "got -1"],
  [
    "textPosition middle",
    { textPosition: "middle" },
    "UNSUPPORTED",
    "textPosition",
    `got "middle"`,
  ],
  ["sparsity 1", { sparsity: 1 }, "INVALID_OPTION", "sparsity", "got 1"],
  ["sparsity negative", { sparsity: -0.1 }, "INVALID_OPTION", "sparsity", "got -0.1"],
  ["sparsity NaN", { sparsity: NaN }, "INVALID_OPTION", "sparsity", "got NaN"],
  ["sparsity a string", { sparsity: "0.9" }, "INVALID_OPTION", "sparsity", `got "0.9"`],
  ["pool of one number", { pool: [8] }, "INVALID_OPTION", "pool", "got [8]"],
  ["pool not an array", { pool: 8 }, "INVALID_OPTION", "pool", "got 8"],
  ["pool height 0", { pool: [0, 16] }, "INVALID_OPTION", "pool[0]", "got 0"],
  ["pool width fractional", { pool: [8, 1.5] }, "INVALID_OPTION", "pool[1]", "got 1.5"],
  ["policy topk", { policy: "topk" }, "UNSUPPORTED", "policy", `got "topk"`],
  ["headDim 260", { headDim: 260 }, "UNSUPPORTED", "headDim", "got 260"],
  ["dtype bf16", { dtype: "bf16" }, "UNSUPPORTED", "dtype", `got "bf16"`],
  ["layout BHDS", { layout: "BHDS" }, "UNSUPPORTED", "layout", `got "BHDS"`],
  [
    "too many draft tokens",
    { frames: 1000, height: 1000, width: 1000 },
    "TOO_LARGE",
    "frames",
    "1000000000",
  ],
  ["unknown model", { model: "sora-9" }, "UNKNOWN_MODEL", "model", `"sora-9"`],
];

let wasm: Runtime | undefined;
let wasmError: unknown;
try {
  wasm = await openRuntime({ backend: "wasm" });
} catch (e) {
  wasmError = e;
}

function wasmTest(name: string, fn: (rt: Runtime) => void | Promise<void>): void {
  Deno.test({
    name: `errors (wasm): ${name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => {
      if (!wasm) throw new Error(`the wasm runtime did not open: ${reasonOf(wasmError)}`);
      return fn(wasm);
    },
  });
}

for (const [what, override, code, field, names] of DENSE_OPTION_CASES) {
  wasmTest(`attention() with ${what}`, (rt) => {
    const opts = { ...DENSE, ...override } as unknown as AttentionOptions;
    expectThrow(() => rt.attention(opts), { code, field, names }, what);
  });
}

for (const [what, override, code, field, names] of DRAFT_OPTION_CASES) {
  wasmTest(`draftAttention() with ${what}`, (rt) => {
    const opts = { ...DRAFT, ...override } as unknown as DraftAttentionOptions;
    expectThrow(() => rt.draftAttention(opts), { code, field, names }, what);
  });
}

wasmTest("attention() without options, and with an array", (rt) => {
  const call = rt.attention as (o: unknown) => unknown;
  expectThrow(() => call.call(rt, undefined), {
    code: "INVALID_OPTION",
    field: "options",
    names: "undefined",
  }, "no options");
  expectThrow(() => call.call(rt, [1, 2]), {
    code: "INVALID_OPTION",
    field: "options",
    names: "[1, 2]",
  }, "array options");
});

wasmTest("draftAttention() without a required field", (rt) => {
  const { heads: _, ...noHeads } = DRAFT;
  expectThrow(() => rt.draftAttention(noHeads), {
    code: "INVALID_OPTION",
    field: "heads",
    names: "undefined",
  }, "heads missing");
});

// ---------------------------------------------------------------------------------------------
// run(): inputs
// ---------------------------------------------------------------------------------------------

const N = 65 * 2 * 32;

wasmTest("run() with a Float64Array", async (rt) => {
  const op = rt.attention(DENSE);
  const ok = new Float32Array(N);
  await expectReject(() => op.run(new Float64Array(N) as unknown as Float32Array, ok, ok), {
    code: "INVALID_INPUT",
    field: "q",
    names: `Float64Array(${N})`,
  }, "Float64Array q");
  op.dispose();
});

wasmTest("run() of an f16 op with a Float32Array", async (rt) => {
  const op = rt.attention({ ...DENSE, dtype: "f16" });
  const ok = new Float16Array(N);
  await expectReject(() => op.run(new Float32Array(N), ok, ok), {
    code: "INVALID_INPUT",
    field: "q",
    names: `Float32Array(${N})`,
  }, "Float32Array q for f16");
  op.dispose();
});

wasmTest("run() with k of the wrong length", async (rt) => {
  const op = rt.attention(DENSE);
  const ok = new Float32Array(N);
  await expectReject(() => op.run(ok, new Float32Array(N - 1), ok), {
    code: "INVALID_INPUT",
    field: "k",
    names: `got ${N - 1}`,
  }, "short k");
  op.dispose();
});

wasmTest("run() of a draft op with v of the wrong length", async (rt) => {
  const op = rt.draftAttention({ ...DRAFT, textTokens: 5 });
  const n = (2 * 13 * 21 + 5) * 2 * 32;
  const ok = new Float32Array(n);
  await expectReject(() => op.run(ok, ok, new Float32Array(2 * 13 * 21 * 2 * 32)), {
    code: "INVALID_INPUT",
    field: "v",
    names: `got ${2 * 13 * 21 * 2 * 32}`,
  }, "v without the text tokens");
  op.dispose();
});

wasmTest("run() with a plain array", async (rt) => {
  const op = rt.attention({ tokens: 1, heads: 1, headDim: 4 });
  const ok = new Float32Array(4);
  await expectReject(() => op.run(ok, ok, [1, 2, 3, 4] as unknown as Float32Array), {
    code: "INVALID_INPUT",
    field: "v",
    names: "[1, 2, 3, 4]",
  }, "array v");
  op.dispose();
});

wasmTest("run() with GPUBuffer-style arguments on the wasm backend", async (rt) => {
  const op = rt.attention(DENSE);
  const run = op.run as (a: unknown) => Promise<void>;
  await expectReject(() => run.call(op, { q: 1, k: 2, v: 3, out: 4 }), {
    code: "UNSUPPORTED",
    field: "q",
    names: "wasm",
  }, "buffers on wasm");
  op.dispose();
});

// ---------------------------------------------------------------------------------------------
// Use after dispose
// ---------------------------------------------------------------------------------------------

wasmTest("run() and lastMask() after op.dispose()", async (rt) => {
  const op = rt.draftAttention(DRAFT);
  op.dispose();
  op.dispose(); // idempotent
  const x = new Float32Array(2 * 13 * 21 * 2 * 32);
  const want: Want = { code: "DISPOSED", field: "op", names: "dispose()" };
  await expectReject(() => op.run(x, x, x), want, "run after dispose");
  await expectReject(() => op.lastMask(), want, "lastMask after dispose");
});

Deno.test({
  name: "errors (wasm): a disposed runtime refuses new ops and its ops refuse to run",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const rt = await openRuntime({ backend: "wasm" });
    const op = rt.attention(DENSE);
    rt.dispose();
    expectThrow(() => rt.attention(DENSE), {
      code: "DISPOSED",
      field: "runtime",
      names: "dispose()",
    }, "attention after runtime dispose");
    expectThrow(() => rt.draftAttention(DRAFT), {
      code: "DISPOSED",
      field: "runtime",
      names: "dispose()",
    }, "draftAttention after runtime dispose");
    const x = new Float32Array(N);
    await expectReject(() => op.run(x, x, x), {
      code: "DISPOSED",
      field: "op",
      names: "dispose()",
    }, "op of a disposed runtime");
  },
});

// ---------------------------------------------------------------------------------------------
// openRuntime()
// ---------------------------------------------------------------------------------------------

const OPEN_CASES: [string, unknown, Want][] = [
  ["backend cuda", { backend: "cuda" }, { code: "UNSUPPORTED", field: "backend", names: `"cuda"` }],
  ["backend 1", { backend: 1 }, { code: "INVALID_OPTION", field: "backend", names: "got 1" }],
  ["limits max", { limits: "max" }, { code: "INVALID_OPTION", field: "limits", names: `"max"` }],
  ["options null", null, { code: "INVALID_OPTION", field: "options", names: "null" }],
  [
    "device that is not a GPUDevice",
    { device: { label: "fake" } },
    { code: "INVALID_OPTION", field: "device", names: "Object" },
  ],
];

for (const [what, options, want] of OPEN_CASES) {
  Deno.test(`errors: openRuntime() with ${what}`, async () => {
    const open = openRuntime as (o: unknown) => Promise<Runtime>;
    await expectReject(() => open(options), want, what);
  });
}

// ---------------------------------------------------------------------------------------------
// WebGPU-specific: caller-owned buffers
// ---------------------------------------------------------------------------------------------

let gpu: Runtime | undefined;
let gpuAvailability: Availability = {};
try {
  gpu = await openRuntime({ backend: "webgpu" });
} catch (e) {
  gpuAvailability = gpuMissing(reasonOf(e));
}

function gpuTest(name: string, fn: (rt: Runtime) => Promise<void>): void {
  const why = gpuAvailability.skip ?? "";
  Deno.test({
    name: `errors (webgpu): ${name}${why ? ` [skipped: ${why}]` : ""}`,
    ignore: why !== "",
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => {
      if (gpuAvailability.failure) throw new Error(gpuAvailability.failure);
      return fn(gpu!);
    },
  });
}

function storage(rt: Runtime, bytes: number): GPUBuffer {
  return rt.device!.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}

gpuTest("run() with a GPUBuffer too small for q", async (rt) => {
  const op = rt.attention(DENSE);
  const bytes = N * 4;
  const [q, k, v, out] = [
    storage(rt, bytes - 256),
    storage(rt, bytes),
    storage(rt, bytes),
    storage(rt, bytes),
  ];
  try {
    await expectReject(() => op.run({ q, k, v, out }), {
      code: "INVALID_BUFFER",
      field: "q",
      names: String(bytes - 256),
    }, "small q buffer");
  } finally {
    op.dispose();
    for (const b of [q, k, v, out]) b.destroy();
  }
});

gpuTest("run() with an output buffer lacking STORAGE usage", async (rt) => {
  const op = rt.attention(DENSE);
  const bytes = N * 4;
  const [q, k, v] = [storage(rt, bytes), storage(rt, bytes), storage(rt, bytes)];
  const out = rt.device!.createBuffer({ size: bytes, usage: GPUBufferUsage.COPY_DST });
  try {
    await expectReject(() => op.run({ q, k, v, out }), {
      code: "INVALID_BUFFER",
      field: "out",
      names: "STORAGE",
    }, "out without STORAGE");
  } finally {
    op.dispose();
    for (const b of [q, k, v, out]) b.destroy();
  }
});

gpuTest("run() with a typed array where a GPUBuffer belongs", async (rt) => {
  const op = rt.attention(DENSE);
  const bytes = N * 4;
  const [q, k, out] = [storage(rt, bytes), storage(rt, bytes), storage(rt, bytes)];
  try {
    const run = op.run as (a: unknown) => Promise<void>;
    await expectReject(() => run.call(op, { q, k, v: new Float32Array(N), out }), {
      code: "INVALID_INPUT",
      field: "v",
      names: `Float32Array(${N})`,
    }, "typed array v among buffers");
  } finally {
    op.dispose();
    for (const b of [q, k, out]) b.destroy();
  }
});

Deno.test({
  name: "errors: dispose the runtimes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => {
    wasm?.dispose();
    gpu?.dispose();
  },
});
