/**
 * Malformed calls through the public API. Each one must give a `DraftAttentionError` with the
 * exact `code` and `field`, and a message that names the offending value. Construction errors
 * are thrown synchronously by `attention()` / `draftAttention()`; `run()`, `lastMask()` and
 * `openRuntime()` reject. Calls that need a backend run on WebAssembly, and GPU-specific ones
 * (caller-owned `GPUBuffer`s) on WebGPU, under the same missing-GPU policy as the conformance
 * suite.
 *
 * Every case registers a row of `docs/errors.md` (input -> code, field); the last test checks the
 * file is exactly that table, so the doc cannot drift from the tests.
 */
import assert from "node:assert/strict";
import {
  type AttentionOp,
  DraftAttentionError,
  type DraftAttentionErrorCode,
  type DraftAttentionOp,
  openRuntime,
  type Runtime,
} from "../mod.ts";
import type { AttentionOptions, DraftAttentionOptions } from "../src/types.ts";
import { createStepSchedule, denseStats, encodeNpy, generateWorkload, parseNpy } from "../mod.ts";
import { buildPlan, densePlan, PLANNER_KEEP_BYTES, plannerMemoryBytes } from "../src/plan.ts";
import { OPTION_KEYS } from "../src/validate.ts";
import { type Availability, gpuMissing, reasonOf } from "./_cases.ts";
import { attentionF64, maxAbsErr } from "./reference.ts";
import { renderServeSection } from "./_serve_cases.ts";

/** What the error must say: code, field, and a substring of the message naming the value. */
interface Want {
  code: DraftAttentionErrorCode;
  field: string;
  /** Text the message must contain (the value as the library prints it). */
  names: string;
}

// ---------------------------------------------------------------------------------------------
// The catalogue: every case below registers its row here at load time, and the last test checks
// that docs/errors.md is exactly the rendering of these rows (regenerate it with
// `DRAFTATTN_WRITE_DOCS=1 deno test -A test/errors_test.ts`).
// ---------------------------------------------------------------------------------------------

/** One row of docs/errors.md. */
interface Row {
  call: string;
  input: string;
  code: DraftAttentionErrorCode;
  field: string;
  /** "any": run on WebAssembly (the checks are backend-independent); "webgpu": GPU only. */
  backend: "any" | "webgpu" | "wasm";
}

const CATALOGUE: Row[] = [];

/** Registers a row and returns what the test must see, so the doc and the test cannot differ. */
function entry(call: string, input: string, want: Want, backend: Row["backend"] = "any"): Want {
  CATALOGUE.push({ call, input, code: want.code, field: want.field, backend });
  return want;
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
  ["precision f16", { precision: "f16" }, "UNSUPPORTED", "precision", `got "f16"`],
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
  ["tokens NaN", { tokens: NaN }, "INVALID_OPTION", "tokens", "got NaN"],
  ["batch Infinity", { batch: Infinity }, "INVALID_OPTION", "batch", "got Infinity"],
  ["headDim NaN", { headDim: NaN }, "INVALID_OPTION", "headDim", "got NaN"],
  ["scale Infinity", { scale: Infinity }, "INVALID_OPTION", "scale", "got Infinity"],
  ["scale -Infinity", { scale: -Infinity }, "INVALID_OPTION", "scale", "got -Infinity"],
  ["scale a string", { scale: "0.1" }, "INVALID_OPTION", "scale", `got "0.1"`],
  ["layout null", { layout: null }, "INVALID_OPTION", "layout", "got null"],
  [
    "huge batch",
    { batch: 2 ** 20, tokens: 2 ** 20, heads: 1, headDim: 4 },
    "TOO_LARGE",
    "tokens",
    String(2 ** 42),
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
  ["policy bogus", { policy: "bogus" }, "UNSUPPORTED", "policy", `got "bogus"`],
  ["budget bogus", { budget: "pairs" }, "UNSUPPORTED", "budget", `got "pairs"`],
  [
    "budget tokens with rowTopK",
    { policy: "rowTopK", budget: "tokens" },
    "INVALID_OPTION",
    "budget",
    `policy is "rowTopK"`,
  ],
  ["headDim 260", { headDim: 260 }, "UNSUPPORTED", "headDim", "got 260"],
  ["dtype bf16", { dtype: "bf16" }, "UNSUPPORTED", "dtype", `got "bf16"`],
  ["layout BHDS", { layout: "BHDS" }, "UNSUPPORTED", "layout", `got "BHDS"`],
  ["precision a boolean", { precision: true }, "INVALID_OPTION", "precision", "got true"],
  [
    "too many draft tokens",
    { frames: 1000, height: 1000, width: 1000 },
    "TOO_LARGE",
    "frames",
    "1000000000",
  ],
  ["unknown model", { model: "sora-9" }, "UNKNOWN_MODEL", "model", `"sora-9"`],
  [
    "model named after an Object member",
    { model: "toString" },
    "UNKNOWN_MODEL",
    "model",
    `"toString"`,
  ],
  ["model not a string", { model: 7 }, "UNKNOWN_MODEL", "model", "7"],
  ["frames Infinity", { frames: Infinity }, "INVALID_OPTION", "frames", "got Infinity"],
  ["textTokens Infinity", { textTokens: Infinity }, "INVALID_OPTION", "textTokens", "got Infinity"],
  ["sparsity Infinity", { sparsity: Infinity }, "INVALID_OPTION", "sparsity", "got Infinity"],
  ["scale NaN", { scale: NaN }, "INVALID_OPTION", "scale", "got NaN"],
  ["pool height NaN", { pool: [NaN, 16] }, "INVALID_OPTION", "pool[0]", "got NaN"],
  ["pool width above 4096", { pool: [8, 5000] }, "INVALID_OPTION", "pool[1]", "got 5000"],
  ["pool a string", { pool: "8x16" }, "INVALID_OPTION", "pool", `got "8x16"`],
  ["heads beyond int32", { heads: 2 ** 31 }, "INVALID_OPTION", "heads", `got ${2 ** 31}`],
  [
    "video tokens beyond int32",
    { frames: 1, height: 65536, width: 65536, pool: [4096, 4096] },
    "TOO_LARGE",
    "frames",
    String(2 ** 32),
  ],
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

/** An option override as the doc shows it: `{ tokens: NaN }`. */
function shown(override: Record<string, unknown>): string {
  const value = (v: unknown): string =>
    typeof v === "number"
      ? String(v)
      : Array.isArray(v)
      ? `[${v.map(value).join(", ")}]`
      : JSON.stringify(v);
  return `\`{ ${Object.entries(override).map(([k, v]) => `${k}: ${value(v)}`).join(", ")} }\``;
}

for (const [what, override, code, field, names] of DENSE_OPTION_CASES) {
  const want = entry("`attention()`", `${what}: ${shown(override)}`, { code, field, names });
  wasmTest(`attention() with ${what}`, (rt) => {
    const opts = { ...DENSE, ...override } as unknown as AttentionOptions;
    expectThrow(() => rt.attention(opts), want, what);
  });
}

for (const [what, override, code, field, names] of DRAFT_OPTION_CASES) {
  const want = entry("`draftAttention()`", `${what}: ${shown(override)}`, { code, field, names });
  wasmTest(`draftAttention() with ${what}`, (rt) => {
    const opts = { ...DRAFT, ...override } as unknown as DraftAttentionOptions;
    expectThrow(() => rt.draftAttention(opts), want, what);
  });
}

{
  const noOptions = entry("`attention()`", "no options", {
    code: "INVALID_OPTION",
    field: "options",
    names: "undefined",
  });
  const arrayOptions = entry("`attention()`", "an array as options", {
    code: "INVALID_OPTION",
    field: "options",
    names: "[1, 2]",
  });
  wasmTest("attention() without options, and with an array", (rt) => {
    const call = rt.attention as (o: unknown) => unknown;
    expectThrow(() => call.call(rt, undefined), noOptions, "no options");
    expectThrow(() => call.call(rt, [1, 2]), arrayOptions, "array options");
  });
}

{
  const want = entry("`draftAttention()`", "`heads` missing", {
    code: "INVALID_OPTION",
    field: "heads",
    names: "undefined",
  });
  wasmTest("draftAttention() without a required field", (rt) => {
    const { heads: _, ...noHeads } = DRAFT;
    expectThrow(() => rt.draftAttention(noHeads), want, "heads missing");
  });
}

// ---------------------------------------------------------------------------------------------
// run(): inputs
// ---------------------------------------------------------------------------------------------

const N = 65 * 2 * 32;

/** A `run()` case on typed arrays: the op, the arguments, what must come back. */
function runCase(
  input: string,
  want: Want,
  make: (rt: Runtime) => { op: AttentionOp; args: unknown[] },
): void {
  const w = entry("`op.run()`", input, want);
  wasmTest(`run() with ${input.replace(/`/g, "")}`, async (rt) => {
    const { op, args } = make(rt);
    const run = op.run as (...a: unknown[]) => Promise<unknown>;
    try {
      await expectReject(() => run.apply(op, args), w, input);
    } finally {
      op.dispose();
    }
  });
}

const f32 = (n: number, at = -1, value = 0) => {
  const x = new Float32Array(n).fill(0.25);
  if (at >= 0) x[at] = value;
  return x;
};
const f16 = (n: number, at = -1, value = 0) => {
  const x = new Float16Array(n).fill(0.25);
  if (at >= 0) x[at] = value;
  return x;
};

runCase("a `Float64Array` q", {
  code: "INVALID_INPUT",
  field: "q",
  names: `Float64Array(${N})`,
}, (rt) => ({ op: rt.attention(DENSE), args: [new Float64Array(N), f32(N), f32(N)] }));

runCase("a `Float32Array` q for dtype f16", {
  code: "INVALID_INPUT",
  field: "q",
  names: `Float32Array(${N})`,
}, (rt) => ({ op: rt.attention({ ...DENSE, dtype: "f16" }), args: [f32(N), f16(N), f16(N)] }));

runCase("k one element short", {
  code: "INVALID_INPUT",
  field: "k",
  names: `got ${N - 1}`,
}, (rt) => ({ op: rt.attention(DENSE), args: [f32(N), f32(N - 1), f32(N)] }));

{
  const n = (2 * 13 * 21 + 5) * 2 * 32;
  const short = 2 * 13 * 21 * 2 * 32;
  runCase("a draft op's v without the text tokens", {
    code: "INVALID_INPUT",
    field: "v",
    names: `got ${short}`,
  }, (rt) => ({
    op: rt.draftAttention({ ...DRAFT, textTokens: 5 }),
    args: [f32(n), f32(n), f32(short)],
  }));
}

runCase("a plain array v", {
  code: "INVALID_INPUT",
  field: "v",
  names: "[1, 2, 3, 4]",
}, (rt) => ({
  op: rt.attention({ tokens: 1, heads: 1, headDim: 4 }),
  args: [f32(4), f32(4), [1, 2, 3, 4]],
}));

runCase("no arguments", {
  code: "INVALID_INPUT",
  field: "q",
  names: "undefined",
}, (rt) => ({ op: rt.attention(DENSE), args: [] }));

runCase("q and k only", {
  code: "INVALID_INPUT",
  field: "v",
  names: "undefined",
}, (rt) => ({ op: rt.attention(DENSE), args: [f32(N), f32(N)] }));

// NaN and infinities are rejected, naming the tensor, the value and its (b, t, h, d).
runCase("NaN in q (f32)", {
  code: "INVALID_INPUT",
  field: "q",
  names: "NaN at index 70 (b=0, t=1, h=0, d=6)",
}, (rt) => ({ op: rt.attention(DENSE), args: [f32(N, 70, NaN), f32(N), f32(N)] }));

runCase("Infinity in k (f32, BHSD)", {
  code: "INVALID_INPUT",
  field: "k",
  names: "Infinity at index 2085 (b=0, t=0, h=1, d=5)",
}, (rt) => ({
  op: rt.attention({ ...DENSE, layout: "BHSD" }),
  args: [f32(N), f32(N, 65 * 32 + 5, Infinity), f32(N)],
}));

runCase("-Infinity in v (f16)", {
  code: "INVALID_INPUT",
  field: "v",
  names: "-Infinity at index 4159",
}, (rt) => ({
  op: rt.attention({ ...DENSE, dtype: "f16" }),
  args: [f16(N), f16(N), f16(N, N - 1, -Infinity)],
}));

{
  const n = 2 * 13 * 21 * 2 * 32;
  runCase("NaN in a draft op's k (f16)", {
    code: "INVALID_INPUT",
    field: "k",
    names: "NaN at index 0",
  }, (rt) => ({
    op: rt.draftAttention({ ...DRAFT, dtype: "f16" }),
    args: [f16(n), f16(n, 0, NaN), f16(n)],
  }));
}

{
  const want = entry("`op.run()`", "layer 1 reusing layer 0's mask (`maskEvery: 2`)", {
    code: "INVALID_INPUT",
    field: "layer",
    names: "1 would reuse the block mask computed for layer 0",
  });
  wasmTest("run() of layer 1 on an op holding layer 0's mask", async (rt) => {
    const op = rt.draftAttention({ ...DRAFT, maskEvery: 2 });
    const x = f32(2 * 13 * 21 * 2 * 32);
    await op.run(x, x, x, { layer: 0 });
    await expectReject(() => op.run(x, x, x, { layer: 1 }), want, "layer reuse");
    op.dispose();
  });
  runCase("layer -1: `{ layer: -1 }`", {
    code: "INVALID_OPTION",
    field: "layer",
    names: "got -1",
  }, (rt) => {
    const x = f32(2 * 13 * 21 * 2 * 32);
    return { op: rt.draftAttention(DRAFT), args: [x, x, x, { layer: -1 }] };
  });
}

{
  const want = entry("`op.run()`", "GPUBuffer-style arguments on the wasm backend", {
    code: "UNSUPPORTED",
    field: "q",
    names: "wasm",
  }, "wasm");
  wasmTest("run() with GPUBuffer-style arguments on the wasm backend", async (rt) => {
    const op = rt.attention(DENSE);
    const run = op.run as (a: unknown) => Promise<void>;
    await expectReject(() => run.call(op, { q: 1, k: 2, v: 3, out: 4 }), want, "buffers on wasm");
    op.dispose();
  });
}

{
  const want = entry("`op.lastMask()`", "a dense op", {
    code: "UNSUPPORTED",
    field: "op",
    names: "dense attention has no mask",
  });
  wasmTest("lastMask() of a dense op", async (rt) => {
    const op = rt.attention(DENSE) as unknown as DraftAttentionOp;
    await expectReject(() => op.lastMask(), want, "lastMask of dense");
    op.dispose();
  });
}

// ---------------------------------------------------------------------------------------------
// Use after dispose
// ---------------------------------------------------------------------------------------------

{
  const runWant = entry("`op.run()`", "after `op.dispose()`", {
    code: "DISPOSED",
    field: "op",
    names: "dispose()",
  });
  const maskWant = entry("`op.lastMask()`", "after `op.dispose()`", runWant);
  wasmTest("run() and lastMask() after op.dispose()", async (rt) => {
    const op = rt.draftAttention(DRAFT);
    op.dispose();
    op.dispose(); // idempotent
    const x = new Float32Array(2 * 13 * 21 * 2 * 32);
    await expectReject(() => op.run(x, x, x), runWant, "run after dispose");
    await expectReject(() => op.lastMask(), maskWant, "lastMask after dispose");
  });
}

{
  const runtimeWant: Want = { code: "DISPOSED", field: "runtime", names: "dispose()" };
  const attentionWant = entry("`attention()`", "after `rt.dispose()`", runtimeWant);
  const draftWant = entry("`draftAttention()`", "after `rt.dispose()`", runtimeWant);
  const opWant = entry("`op.run()`", "an op of a disposed runtime", {
    code: "DISPOSED",
    field: "op",
    names: "dispose()",
  });
  Deno.test({
    name: "errors (wasm): a disposed runtime refuses new ops and its ops refuse to run",
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const rt = await openRuntime({ backend: "wasm" });
      const op = rt.attention(DENSE);
      rt.dispose();
      rt.dispose(); // idempotent
      expectThrow(() => rt.attention(DENSE), attentionWant, "attention after runtime dispose");
      expectThrow(() => rt.draftAttention(DRAFT), draftWant, "draftAttention after dispose");
      const x = new Float32Array(N);
      await expectReject(() => op.run(x, x, x), opWant, "op of a disposed runtime");
    },
  });
}

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
  [
    "a device with backend wasm",
    { device: { label: "fake" }, backend: "wasm" },
    { code: "INVALID_OPTION", field: "device", names: `backend "wasm"` },
  ],
];

for (const [what, options, want] of OPEN_CASES) {
  const w = entry("`openRuntime()`", what, want);
  Deno.test(`errors: openRuntime() with ${what}`, async () => {
    const open = openRuntime as (o: unknown) => Promise<Runtime>;
    await expectReject(() => open(options), w, what);
  });
}

// ---------------------------------------------------------------------------------------------
// WebGPU-specific: caller-owned buffers, device limits
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

function storage(device: GPUDevice, bytes: number): GPUBuffer {
  return device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}

/**
 * A `run({ q, k, v, out })` case: four good buffers of the dense op's size, then `spoil` replaces
 * or damages some (it returns clean-ups to run afterwards).
 */
function bufferCase(
  input: string,
  want: Want,
  spoil: (
    rt: Runtime,
    b: Record<"q" | "k" | "v" | "out", GPUBuffer>,
  ) => Promise<(() => void)[]>,
): void {
  const w = entry("`op.run({ q, k, v, out })`", input, want, "webgpu");
  gpuTest(`run() with ${input.replace(/`/g, "")}`, async (rt) => {
    const op = rt.attention(DENSE);
    const bytes = N * 4;
    const bufs = {
      q: storage(rt.device!, bytes),
      k: storage(rt.device!, bytes),
      v: storage(rt.device!, bytes),
      out: storage(rt.device!, bytes),
    };
    const extra: (() => void)[] = [];
    try {
      extra.push(...await spoil(rt, bufs));
      await expectReject(() => op.run(bufs), w, input);
      // The op stays usable after the rejection.
      const x = new Float32Array(N).fill(0.5);
      const out = await op.run(x, x, x);
      assert.ok(out.every((y) => Math.abs(y - 0.5) < 1e-6), `${input}: op unusable afterwards`);
    } finally {
      op.dispose();
      for (const b of Object.values(bufs)) if (b instanceof GPUBuffer) b.destroy();
      for (const done of extra) done();
    }
  });
}

bufferCase("a q buffer 256 bytes too small", {
  code: "INVALID_BUFFER",
  field: "q",
  names: String(N * 4 - 256),
}, (rt, b) => {
  b.q.destroy();
  b.q = storage(rt.device!, N * 4 - 256);
  return Promise.resolve([]);
});

bufferCase("an out buffer one byte too small", {
  code: "INVALID_BUFFER",
  field: "out",
  names: String(N * 4 - 4),
}, (rt, b) => {
  b.out.destroy();
  b.out = storage(rt.device!, N * 4 - 4);
  return Promise.resolve([]);
});

bufferCase("an out buffer lacking STORAGE usage", {
  code: "INVALID_BUFFER",
  field: "out",
  names: "STORAGE",
}, (rt, b) => {
  b.out.destroy();
  b.out = rt.device!.createBuffer({ size: N * 4, usage: GPUBufferUsage.COPY_DST });
  return Promise.resolve([]);
});

bufferCase("a q buffer lacking STORAGE usage (MAP_READ)", {
  code: "INVALID_BUFFER",
  field: "q",
  names: "STORAGE",
}, (rt, b) => {
  b.q.destroy();
  b.q = rt.device!.createBuffer({
    size: N * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  return Promise.resolve([]);
});

bufferCase("a destroyed q buffer", {
  code: "INVALID_BUFFER",
  field: "q",
  names: "destroyed",
}, (_rt, b) => {
  b.q.destroy();
  return Promise.resolve([]);
});

bufferCase("a k buffer of another device", {
  code: "INVALID_BUFFER",
  field: "k",
  names: "another device",
}, async (_rt, b) => {
  const adapter = await navigator.gpu.requestAdapter();
  const other = await adapter!.requestDevice();
  b.k.destroy();
  b.k = storage(other, N * 4);
  return [() => other.destroy()];
});

bufferCase("a mapped v buffer", {
  code: "INVALID_BUFFER",
  field: "v",
  names: "mapped",
}, (rt, b) => {
  b.v.destroy();
  b.v = rt.device!.createBuffer({
    size: N * 4,
    usage: GPUBufferUsage.STORAGE,
    mappedAtCreation: true,
  });
  return Promise.resolve([]);
});

bufferCase("out the same buffer as q", {
  code: "INVALID_BUFFER",
  field: "out",
  names: "same GPUBuffer as q",
}, (_rt, b) => {
  b.out.destroy();
  b.out = b.q;
  return Promise.resolve([]);
});

bufferCase("a typed array v among the buffers", {
  code: "INVALID_INPUT",
  field: "v",
  names: `Float32Array(${N})`,
}, (_rt, b) => {
  b.v.destroy();
  (b as Record<string, unknown>).v = new Float32Array(N);
  return Promise.resolve([]);
});

bufferCase("no out buffer", {
  code: "INVALID_INPUT",
  field: "out",
  names: "undefined",
}, (_rt, b) => {
  b.out.destroy();
  delete (b as Partial<typeof b>).out;
  return Promise.resolve([]);
});

{
  const want = entry("`attention()`", "one head beyond any binding: BHSD, 2^24 tokens x 256 f32", {
    code: "TOO_LARGE",
    field: "q",
    names: String(2 ** 24 * 256 * 4),
  }, "webgpu");
  gpuTest("attention() with one head beyond any storage binding", (rt) => {
    expectThrow(
      () => rt.attention({ tokens: 2 ** 24, heads: 1, headDim: 256, layout: "BHSD" }),
      want,
      "head beyond binding",
    );
    return Promise.resolve();
  });
}

{
  const options = {
    frames: 1,
    height: 240,
    width: 250,
    pool: [1, 1] as [number, number],
    heads: 1,
    headDim: 4,
  };
  const gpuWant = entry(
    "`draftAttention()`",
    "a draft map beyond any binding: g = 60,000 (60,000^2 x 4 bytes)",
    { code: "TOO_LARGE", field: "frames", names: String(60000 * 60000 * 4) },
    "webgpu",
  );
  gpuTest("draftAttention() whose draft map exceeds any storage binding", (rt) => {
    expectThrow(() => rt.draftAttention(options), gpuWant, "draft map beyond binding");
    return Promise.resolve();
  });
  // Answered from the sizes before the plan is built (it used to be the first run()'s answer).
  const wasmWant = entry(
    "`draftAttention()`",
    "a draft map beyond WebAssembly memory: g = 60,000",
    { code: "TOO_LARGE", field: "tokens", names: "g = 60000" },
    "wasm",
  );
  wasmTest("draftAttention() whose draft map exceeds WebAssembly memory", (rt) => {
    expectThrow(() => rt.draftAttention(options), wasmWant, "draft map beyond wasm memory");
  });
}

// ---------------------------------------------------------------------------------------------
// Unknown options: a typo must not silently run at the default
// ---------------------------------------------------------------------------------------------

const STATS_SHAPE = { heads: 1, headDim: 4, frames: 1, height: 1, width: 2 };

{
  const cases: [
    string,
    string,
    Record<string, unknown>,
    Want,
    (rt: Runtime, o: never) => unknown,
  ][] = [
    [
      "`draftAttention()`",
      "a misspelt option: `{ sparsty: 0.5 }`",
      { ...DRAFT, sparsty: 0.5 },
      { code: "INVALID_OPTION", field: "sparsty", names: `did you mean "sparsity"` },
      (rt, o) => rt.draftAttention(o),
    ],
    [
      "`draftAttention()`",
      'a misspelt option next to a model: `{ model: "ltx-video", sparsityy: 0.5 }`',
      { model: "ltx-video", sparsityy: 0.5 },
      { code: "INVALID_OPTION", field: "sparsityy", names: `did you mean "sparsity"` },
      (rt, o) => rt.draftAttention(o),
    ],
    [
      "`attention()`",
      'an option in the wrong case: `{ Layout: "BHSD" }`',
      { ...DENSE, Layout: "BHSD" },
      { code: "INVALID_OPTION", field: "Layout", names: `did you mean "layout"` },
      (rt, o) => rt.attention(o),
    ],
    [
      "`attention()`",
      "an option of draftAttention(): `{ sparsity: 0.5 }`",
      { ...DENSE, sparsity: 0.5 },
      { code: "INVALID_OPTION", field: "sparsity", names: "not an option of attention()" },
      (rt, o) => rt.attention(o),
    ],
    [
      "`createStepSchedule()`",
      "a misspelt option: `{ step: 10 }`",
      { step: 10 },
      { code: "INVALID_OPTION", field: "step", names: `did you mean "steps"` },
      (_rt, o) => createStepSchedule(o),
    ],
    [
      "`generateWorkload()`",
      "a misspelt option: `{ sed: 3 }`",
      { frames: 1, height: 2, width: 2, heads: 1, headDim: 4, sed: 3 },
      { code: "INVALID_OPTION", field: "sed", names: `did you mean "seed"` },
      (_rt, o) => generateWorkload(o),
    ],
    [
      "`schedule.mode()`",
      "a misspelt field of the query: `{ step: 0, layer: 3, crosss: true }`",
      { step: 0, layer: 3, crosss: true },
      { code: "INVALID_OPTION", field: "crosss", names: `did you mean "cross"` },
      (_rt, o) => createStepSchedule().mode(o),
    ],
    [
      "`denseStats()`",
      "a misspelt option: `{ onprogress: f }`",
      { onprogress: () => {} },
      { code: "INVALID_OPTION", field: "onprogress", names: `did you mean "onProgress"` },
      (_rt, o) => denseStats(new Float32Array(8), new Float32Array(8), STATS_SHAPE, o),
    ],
    [
      "`parseNpy()`",
      'a misspelt option: `{ nmae: "q.npy" }`',
      { nmae: "q.npy" },
      { code: "INVALID_OPTION", field: "nmae", names: `did you mean "name"` },
      (_rt, o) => parseNpy(encodeNpy({ dtype: "f32", shape: [1], data: new Float32Array(1) }), o),
    ],
  ];
  for (const [call, input, options, want, make] of cases) {
    const w = entry(call, input, want);
    wasmTest(`${call.replace(/`/g, "")} with ${input.replace(/`/g, "")}`, (rt) => {
      expectThrow(() => make(rt, options as never), w, input);
    });
  }
  const open = entry("`openRuntime()`", 'a misspelt option: `{ backnd: "wasm" }`', {
    code: "INVALID_OPTION",
    field: "backnd",
    names: `did you mean "backend"`,
  });
  Deno.test("errors: openRuntime() with a misspelt option", async () => {
    const call = openRuntime as (o: unknown) => Promise<Runtime>;
    await expectReject(() => call({ backnd: "wasm" }), open, "backnd");
  });
}

wasmTest("every documented option key is accepted (none rejected as unknown)", (rt) => {
  // Every key of OPTION_KEYS with a valid value: a key missing from the list fails here.
  const draft = {
    frames: 2,
    height: 8,
    width: 16,
    textTokens: 3,
    textPosition: "before",
    heads: 1,
    headDim: 8,
    batch: 1,
    layout: "BHSD",
    dtype: "f16",
    pool: [4, 8],
    sparsity: 0.5,
    policy: "rowMass",
    tau: 0.8,
    estimator: "hybrid",
    samples: 2,
    maskEvery: 2,
    budget: "tokens",
    scale: 0.3,
    precision: "f16-pv",
  } as const;
  const model = { model: "ltx-video", ...draft };
  assert.deepEqual(Object.keys(model).sort(), [...OPTION_KEYS.draftAttention].sort());
  rt.draftAttention(model).dispose();
  const dense = {
    batch: 2,
    tokens: 9,
    heads: 1,
    headDim: 8,
    layout: "BSHD",
    dtype: "f32",
    scale: 0.3,
    precision: "f32",
  } as const;
  assert.deepEqual(Object.keys(dense).sort(), [...OPTION_KEYS.attention].sort());
  rt.attention(dense).dispose();
  // Undefined values count as absent, as in the edge handler.
  rt.attention({ ...dense, unused: undefined } as never).dispose();
  const schedule = { steps: 30, denseStepFraction: 0.2, denseLayers: 2, denseAboveTimestep: 900 };
  assert.deepEqual(Object.keys(schedule).sort(), [...OPTION_KEYS.createStepSchedule].sort());
  createStepSchedule(schedule);
  const workload = {
    frames: 1,
    height: 2,
    width: 3,
    heads: 1,
    headDim: 4,
    textTokens: 2,
    textPosition: "after",
    batch: 1,
    layout: "BSHD",
    dtype: "f32",
    seed: 5,
    concentration: "sharp",
    scene: "photo",
  } as const;
  assert.deepEqual(Object.keys(workload).sort(), [...OPTION_KEYS.generateWorkload].sort());
  generateWorkload(workload);
});

// ---------------------------------------------------------------------------------------------
// Inputs read through their internal slots: proxies, overridden length, detached buffers
// ---------------------------------------------------------------------------------------------

runCase("a `Proxy` around a `Float32Array` q", {
  code: "INVALID_INPUT",
  field: "q",
  names: "Proxy",
}, (rt) => ({ op: rt.attention(DENSE), args: [new Proxy(f32(N), {}), f32(N), f32(N)] }));

runCase("a revoked `Proxy` k", {
  code: "INVALID_INPUT",
  field: "k",
  names: "unreadable",
}, (rt) => {
  const { proxy, revoke } = Proxy.revocable(f32(N), {});
  revoke();
  return { op: rt.attention(DENSE), args: [f32(N), proxy, f32(N)] };
});

runCase("a `Proxy` q whose traps throw", {
  code: "INVALID_INPUT",
  field: "q",
  names: "unreadable",
}, (rt) => {
  const boom = () => {
    throw new Error("boom");
  };
  const q = new Proxy(f32(N), { get: boom, getPrototypeOf: boom, ownKeys: boom });
  return { op: rt.attention(DENSE), args: [q, f32(N), f32(N)] };
});

runCase("a 10-element q whose `length` is overridden to the right count", {
  code: "INVALID_INPUT",
  field: "q",
  names: "got 10",
}, (rt) => {
  const q = f32(10);
  Object.defineProperty(q, "length", { value: N });
  return { op: rt.attention(DENSE), args: [q, f32(N), f32(N)] };
});

runCase("a v whose `ArrayBuffer` is detached", {
  code: "INVALID_INPUT",
  field: "v",
  names: "detached",
}, (rt) => {
  const v = f32(N);
  structuredClone(v.buffer, { transfer: [v.buffer] });
  return { op: rt.attention(DENSE), args: [f32(N), f32(N), v] };
});

// ---------------------------------------------------------------------------------------------
// Logits beyond f32: rejected (2^120 bound) rather than run into zero rows
// ---------------------------------------------------------------------------------------------

runCase("f32 q and k of 1e19 (logits up to 5.7e38)", {
  code: "INVALID_INPUT",
  field: "q",
  names: "beyond 2^120",
}, (rt) => ({ op: rt.attention(DENSE), args: [f32(N).fill(1e19), f32(N).fill(-1e19), f32(N)] }));

runCase("an f32 v of 1e35 (P V sums up to 65 x 1e35)", {
  code: "INVALID_INPUT",
  field: "v",
  names: "exceeds 2^120",
}, (rt) => ({ op: rt.attention(DENSE), args: [f32(N), f32(N), f32(N, 3, 1e35)] }));

runCase("f16 inputs with scale 1e36", {
  code: "INVALID_INPUT",
  field: "q",
  names: "beyond 2^120",
}, (rt) => ({
  op: rt.attention({ ...DENSE, dtype: "f16", scale: 1e36 }),
  args: [f16(N), f16(N), f16(N)],
}));

// ---------------------------------------------------------------------------------------------
// A geometry that can never run: TOO_LARGE from the sizes, before the planner allocates
// ---------------------------------------------------------------------------------------------

/** 2^27 video tokens in 8 windows: planning it took 7 s and 2.1 GB before the backend refused. */
const HUGE = {
  frames: 8,
  height: 4096,
  width: 4096,
  pool: [4096, 4096] as [number, number],
  heads: 1,
  headDim: 4,
};

{
  const want = entry("`draftAttention()`", "2^27 video tokens (8 x 4096 x 4096 in 8 windows)", {
    code: "TOO_LARGE",
    field: "tokens",
    names: "tokens = 134217728",
  }, "wasm");
  wasmTest("draftAttention() with 2^27 tokens: TOO_LARGE before planning", (rt) => {
    const before = plannerMemoryBytes();
    expectThrow(() => rt.draftAttention(HUGE), want, "2^27 tokens");
    assert.ok(plannerMemoryBytes() <= Math.max(before, PLANNER_KEEP_BYTES));
  });
  const gpuWant = entry("`draftAttention()`", "2^27 video tokens, one head of q beyond a binding", {
    code: "TOO_LARGE",
    field: "q",
    names: String(2 ** 27 * 4 * 4),
  }, "webgpu");
  gpuTest("draftAttention() with 2^27 tokens: TOO_LARGE before planning", (rt) => {
    const max = rt.device!.limits.maxStorageBufferBindingSize;
    if (max >= 2 ** 31) return Promise.resolve(); // a head of 2 GiB fits this device's bindings
    expectThrow(() => rt.draftAttention(HUGE), gpuWant, "2^27 tokens");
    return Promise.resolve();
  });
}

Deno.test("errors: the planner gives back the memory of a large plan", async () => {
  // 2^23 + 2^22 tokens: 96 MiB of token order in the planner's memory, past what it keeps.
  const plan = buildPlan({
    frames: 3,
    height: 2048,
    width: 2048,
    textTokens: 0,
    textPosition: "after",
    poolH: 2048,
    poolW: 2048,
  });
  assert.equal(plan.tokens, 3 * 2 ** 22);
  assert.ok(plannerMemoryBytes() > PLANNER_KEEP_BYTES);
  await Promise.resolve(); // the release runs once the synchronous call is done
  assert.equal(plannerMemoryBytes(), 0, "the grown planner instance was dropped");
  // The next plan gets a fresh, small instance.
  assert.equal(densePlan(300).tiles, 3);
  assert.ok(plannerMemoryBytes() > 0 && plannerMemoryBytes() <= PLANNER_KEEP_BYTES);
});

// ---------------------------------------------------------------------------------------------
// Inputs are taken at run(): later writes do not reach a queued run (both backends)
// ---------------------------------------------------------------------------------------------

/**
 * Runs queued on one op from the same arrays, refilled with other inputs after each run() and
 * overwritten with NaN after the last: each run computes the inputs it was called with. The
 * first is written where the run reads it at the call, the others wait with copies (the second
 * in the op's reused set, refilled in the second round). Arrays on a SharedArrayBuffer run too.
 * `batch: 2` takes the copying path of the WebAssembly backend (one batch element at a time in
 * wasm memory).
 */
async function snapshotStory(rt: Runtime, batch = 1): Promise<void> {
  const opts = { frames: 2, height: 5, width: 9, pool: [2, 4] as [number, number], heads: 2 };
  const op = rt.draftAttention({ ...opts, batch, headDim: 8, textTokens: 3, sparsity: 0.5 });
  const n = batch * (2 * 5 * 9 + 3) * 2 * 8;
  const make = (seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * seed));
  const seeds = [1, 1.7, 0.6, 2.9];
  try {
    const wants: (Float32Array | Float16Array)[] = [];
    for (const s of seeds) wants.push(await op.run(make(1.1 * s), make(2.3 * s), make(0.7 * s)));
    const q = new Float32Array(n), k = new Float32Array(n), v = new Float32Array(n);
    for (let round = 0; round < 2; round++) {
      const runs = seeds.map((s) => {
        q.set(make(1.1 * s));
        k.set(make(2.3 * s));
        v.set(make(0.7 * s));
        return op.run(q, k, v);
      });
      q.fill(NaN);
      k.fill(1e30);
      v.fill(0);
      for (const [i, out] of (await Promise.all(runs)).entries()) {
        assert.deepEqual(out, wants[i], `round ${round}, run ${i} read inputs written after run()`);
      }
      // The caller's arrays were not touched by the runs either.
      assert.ok(q.every(Number.isNaN) && v.every((x) => x === 0));
    }
    // The same values on a SharedArrayBuffer (copied before the check).
    const shared = [1.1, 2.3, 0.7].map((f) => {
      const x = new Float32Array(new SharedArrayBuffer(n * 4));
      x.set(make(f));
      return x;
    });
    const later = op.run(shared[0], shared[1], shared[2]);
    shared[0].fill(NaN);
    assert.deepEqual(await later, wants[0], "inputs on a SharedArrayBuffer");
  } finally {
    op.dispose();
  }
}

wasmTest("inputs written after run() do not reach queued runs", snapshotStory);
gpuTest("inputs written after run() do not reach queued runs", snapshotStory);
wasmTest(
  "inputs written after run() do not reach queued runs (batch 2)",
  (rt) => snapshotStory(rt, 2),
);
gpuTest(
  "inputs written after run() do not reach queued runs (batch 2)",
  (rt) => snapshotStory(rt, 2),
);

/**
 * Logits just under the bound (2^119) run NaN-free with no zero rows, and match the float64
 * reference (a one-hot softmax: each row takes the v of its largest logit).
 */
async function largeLogitStory(rt: Runtime): Promise<void> {
  const tokens = 9, headDim = 4;
  const scale = 1 / Math.sqrt(headDim);
  const n = tokens * headDim;
  const c = Math.sqrt(2 ** 119 / (headDim * scale));
  // Distinct directions per token: each row's largest logit is unique.
  const q = Float32Array.from({ length: n }, (_, i) => c * Math.cos(i * 0.7 + 0.3));
  const k = Float32Array.from({ length: n }, (_, i) => c * Math.sin(i * 1.3 + 0.1));
  const v = Float32Array.from({ length: n }, (_, i) => Math.cos(i));
  const op = rt.attention({ tokens, heads: 1, headDim });
  try {
    const out = await op.run(q, k, v);
    const ref = attentionF64({
      q,
      k,
      v,
      scale,
      dims: { batch: 1, tokens, heads: 1, headDim, layout: "BSHD" },
    });
    for (let t = 0; t < tokens; t++) {
      const row = out.subarray(t * headDim, (t + 1) * headDim);
      assert.ok(row.every(Number.isFinite) && row.some((x) => x !== 0), `row ${t}: ${row}`);
    }
    const { err } = maxAbsErr(out, ref);
    assert.ok(err < 1e-6, `max error ${err} against float64`);
  } finally {
    op.dispose();
  }
}

wasmTest("logits of 2^119 run NaN-free and match float64", largeLogitStory);
gpuTest("logits of 2^119 run NaN-free and match float64", largeLogitStory);

// ---------------------------------------------------------------------------------------------
// cli run: an input that never ends
// ---------------------------------------------------------------------------------------------

{
  const want = entry("`cli run`", "`--q /dev/zero` (a device that never ends)", {
    code: "INVALID_INPUT",
    field: "/dev/zero",
    names: "not a .npy file",
  });
  Deno.test("errors: cli run --q /dev/zero fails at once instead of reading forever", async () => {
    const dir = await Deno.makeTempDir();
    try {
      const x = encodeNpy({ dtype: "f32", shape: [1, 4, 1, 4], data: new Float32Array(16) });
      await Deno.writeFile(`${dir}/x.npy`, x);
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../cli.ts", import.meta.url).href,
          "run",
          "--q",
          "/dev/zero",
          "--k",
          `${dir}/x.npy`,
          "--v",
          `${dir}/x.npy`,
          "--dense",
          "--backend",
          "wasm",
          "--out",
          `${dir}/o.npy`,
        ],
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(60_000),
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1, stderr);
      assert.ok(stderr.includes(`Invalid ${want.field}: ${want.names}`), stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test({
  name: "errors: dispose the runtimes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => {
    wasm?.dispose();
    gpu?.dispose();
  },
});

// ---------------------------------------------------------------------------------------------
// docs/errors.md
// ---------------------------------------------------------------------------------------------

const DOC = new URL("../docs/errors.md", import.meta.url);

/** The codes of src/errors.ts with their doc comments, in declaration order. */
function codesOf(source: string): [string, string][] {
  const union = source.slice(source.indexOf("export type DraftAttentionErrorCode"));
  return [...union.matchAll(/\/\*\*\s*([\s\S]*?)\s*\*\/\s*\|\s*"([A-Z_]+)"/g)].map((m) =>
    [m[2], m[1].replace(/\s*\n\s*\*\s*/g, " ")] as [string, string]
  );
}

/** HTTP status of each code in the edge handler (src/serve.ts `STATUS`). */
function statusesOf(source: string): Map<string, string> {
  const block = source.slice(
    source.indexOf("const STATUS"),
    source.indexOf("};", source.indexOf("const STATUS")),
  );
  return new Map([...block.matchAll(/([A-Z_]+): (\d{3})/g)].map((m) => [m[1], m[2]]));
}

function renderDoc(): string {
  const errors = Deno.readTextFileSync(new URL("../src/errors.ts", import.meta.url));
  const statuses = statusesOf(Deno.readTextFileSync(new URL("../src/serve.ts", import.meta.url)));
  const codes = codesOf(errors);
  const lines = [
    "# Errors",
    "",
    "<!-- Generated by test/errors_test.ts from its cases; do not edit by hand. Regenerate with",
    "     DRAFTATTN_WRITE_DOCS=1 deno test -A test/errors_test.ts -->",
    "",
    "Every failure a caller can cause is a `DraftAttentionError` with a stable `code` and the",
    "`field` at fault; its message names the offending value. Building an op (`attention()`,",
    "`draftAttention()`) throws synchronously; `run()`, `lastMask()` and `openRuntime()` reject.",
    "The edge handler (`src/serve.ts`) answers `{ error: { code, field, message } }` with the",
    "HTTP status below.",
    "",
    "| code | meaning | HTTP |",
    "|---|---|---|",
    ...codes.map(([code, doc]) => `| \`${code}\` | ${doc} | ${statuses.get(code) ?? "500"} |`),
    "",
    "Inputs are checked for NaN and infinities when they are typed arrays (a scan of the bits,",
    "about 1 ns per element); `GPUBuffer` inputs are not read back for it, and a non-finite value",
    "there gives undefined outputs for the rows it reaches (never a hang, and the op stays usable).",
    "",
    "Typed-array inputs are checked and taken when `run()` is called, before it returns: written",
    "where the run reads them (the op's GPU input buffers, WebAssembly memory), or copied when the",
    "run must wait behind an earlier one. Writing to them afterwards (a NaN included) does not reach",
    "the run, however long it waits in the op's queue. They are read through their internal slots, so a `Proxy`, an overridden `length` or a",
    "detached buffer is `INVALID_INPUT` naming the tensor. `GPUBuffer` inputs are read when the run",
    "executes: the caller must not write them until its promise settles (a `writeBuffer` issued",
    "after `run()` is ordered after it by the GPU queue).",
    "",
    "Logits beyond f32's range would turn the softmax into inf - inf = NaN and the rows into zeros;",
    "instead, typed-array inputs are rejected with `INVALID_INPUT` when `headDim * max|q| * max|k| *",
    "scale` or `tokens * max|v|` exceeds 2^120 (about 1.3e36; both backends gave zero rows from 2^126).",
    "The maxima come from the same scan as the NaN check. Below the bound every output row is",
    "finite (tested at 2^119 on both backends). f16 inputs reach the bound only with a scale above",
    "about 1e24.",
    "",
    "Unknown option keys are `INVALID_OPTION` naming the key (with the closest known key when one is",
    "near) for `openRuntime()`, `attention()`, `draftAttention()`, `createStepSchedule()` and",
    "`generateWorkload()`; keys whose value is `undefined` count as absent. A geometry that can",
    "never run on the backend (WebAssembly memory, a device's bindings) is `TOO_LARGE` from its",
    "sizes before the token order is planned.",
    "",
    `## Catalogue (${CATALOGUE.length} malformed calls, each a test)`,
    "",
    'Backend "any": the check is the same on every backend (tested on WebAssembly);',
    '"webgpu"/"wasm": that backend only.',
    "",
    "| # | call | input | code | field | backend |",
    "|---|---|---|---|---|---|",
    ...CATALOGUE.map((r, i) =>
      `| ${i + 1} | ${r.call} | ${
        r.input.replace(/\|/g, "\\|")
      } | \`${r.code}\` | \`${r.field}\` | ${r.backend} |`
    ),
    "",
    // The edge handler's rows: test/_serve_cases.ts, each a test in test/serve_test.ts.
    ...renderServeSection(),
  ];
  return lines.join("\n");
}

Deno.test("errors: docs/errors.md is the catalogue of these cases", async () => {
  const codes = codesOf(Deno.readTextFileSync(new URL("../src/errors.ts", import.meta.url)));
  assert.ok(codes.length >= 10, `parsed ${codes.length} codes from src/errors.ts`);
  for (const r of CATALOGUE) {
    assert.ok(codes.some(([c]) => c === r.code), `${r.input}: ${r.code} is not in src/errors.ts`);
  }
  assert.ok(CATALOGUE.length >= 40, `only ${CATALOGUE.length} malformed calls`);
  const want = renderDoc();
  if (Deno.env.get("DRAFTATTN_WRITE_DOCS") === "1") {
    Deno.mkdirSync(new URL("../docs/", import.meta.url), { recursive: true });
    Deno.writeTextFileSync(DOC, want);
    // Stored as `deno fmt` leaves it (aligned tables), so `deno fmt --check` passes.
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", DOC.pathname] }).output();
  }
  let have = "";
  try {
    have = Deno.readTextFileSync(DOC);
  } catch {
    // compared below
  }
  assert.equal(
    normalised(have),
    normalised(want),
    "docs/errors.md is out of date: run DRAFTATTN_WRITE_DOCS=1 deno test -A test/errors_test.ts",
  );
});

/**
 * A markdown text up to what `deno fmt` changes: table cells trimmed (it pads them) and every
 * run of white space one space (it re-wraps prose).
 */
function normalised(text: string): string {
  return text.split("\n").map((line) =>
    line.startsWith("|")
      ? line.split("|").map((c) => c.trim().replace(/^-+$/, "---")).join("|")
      : line
  ).join("\n").replace(/\s+/g, " ").trim();
}
