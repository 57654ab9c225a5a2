/**
 * Command line: `deno run -A cli.ts <command>` (or `deno task cli <command>`).
 *
 * - `info`: backends, adapter, limits, features, bundled models.
 * - `run`: attention on `.npy` / `.safetensors` files:
 *   `run --q q.npy --k k.npy --v v.npy --out out.npy` with a `--model` and/or the geometry flags
 *   (or `--in dump.safetensors` holding q, k, v and the geometry in its metadata), or `--dense`.
 * - `eval`: draft attention against dense attention on a dumped layer: output rel-L2 (against
 *   our dense output or a dumped reference `o`), mask recall and oracle recall (src/metrics.ts).
 * - `bench`, `demo`: forward their arguments to `bench/bench.ts` and `demo.ts`.
 *
 * Progress goes to stderr, results to stdout (`--json` for machine-readable output). Failures
 * exit 1 with one line: the error message.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DraftAttentionError } from "./src/errors.ts";
import { MODELS } from "./src/models.ts";
import { encodeNpy, encodeNpyU8, npyFileBytes, parseNpy } from "./src/npy.ts";
import { parseSafetensors } from "./src/safetensors.ts";
import { compareOutputs, denseStats, maskRecall, oracleRecall } from "./src/metrics.ts";
import {
  type DraftAttentionOp,
  openRuntime,
  type Runtime,
  type RuntimeOptions,
} from "./src/runtime.ts";
import { type AttentionRequest, buildRequest, REQUEST_FIELDS } from "./src/_request.ts";
import type { Tensor } from "./src/_tensor.ts";
import type {
  BackendKind,
  DenseSpec,
  DraftAttentionOptions,
  DraftSpec,
  DType,
  Estimator,
  Policy,
  TensorArray,
} from "./src/types.ts";

const HELP: Record<string, string> = {
  main: `draftattn: DraftAttention on WebGPU and WebAssembly

usage: deno task cli <command> [options]      (or: deno run -A cli.ts <command>)

commands:
  info     backends, adapter, limits, features and bundled models
  run      draft (or dense) attention on .npy / .safetensors files
  eval     draft vs dense on a dumped layer: output rel-L2, mask recall, oracle recall
  bench    benchmarks (forwards to bench/bench.ts)
  demo     demo (forwards to demo.ts)

Run 'deno task cli <command> --help' for a command's options.`,
  info: `usage: deno task cli info [--backend auto|webgpu|wasm] [--json]

Prints the backend that would be chosen (and why), the WebGPU adapter if any, its limits and
features, and the bundled model profiles.`,
  run: `usage: deno task cli run --q Q.npy --k K.npy --v V.npy --out OUT.npy [options]
       deno task cli run --in DUMP.safetensors --out OUT.npy [options]

q, k, v: .npy files (f32 <f4, f16 <f2, f64 <f8, bf16 <V2 / bfloat16) or .safetensors files
(F32, F16, BF16, F64; the tensor named q / k / v, or the file's only tensor), shape
[batch, tokens, heads, headDim] (BSHD) or [batch, heads, tokens, headDim] (--layout BHSD).
--in reads q, k, v from one .safetensors file whose __metadata__ may hold the geometry
(frames, height, width, textTokens, textPosition, pool, sparsity, layout, model; flags win).
out has the computed dtype (--dtype), the shape and layout of q.

options:
  --in FILE              q, k, v (and the geometry) from one .safetensors file
  --dtype D              f32 or f16: the dtype inputs are converted to and attention runs in
                         (default: the files' own; bf16 and f64 become f32)
  --policy P             percentile (default), rowTopK or rowMass
  --estimator E          draft (default), sampled or hybrid
  --tau X                rowMass: share of each row's mass to keep (default 0.9)
  --samples N            sampled / hybrid: query samples per block (default 8)
  --mask-out FILE        write the block mask as .npy (uint8 |u1, [batch, heads, g, g])
  --model NAME           bundled profile supplying geometry, pool and sparsity
  --frames F --height H --width W
                         latent grid after patchify (frames * height * width video tokens)
  --text-tokens T        text tokens (default 0)
  --text-position P      "after" (default) or "before" the video tokens
  --pool HxW             window size (default 8x16)
  --sparsity S           share of video block pairs dropped, in [0, 1) (default 0.9)
  --scale X              softmax scale (default 1/sqrt(headDim))
  --layout L             BSHD (default) or BHSD
  --dense                exact dense attention (ignores geometry)
  --backend B            auto (default), webgpu or wasm
  --json                 print the result as JSON`,
  eval: `usage: deno task cli eval --in DUMP.safetensors [options]
       deno task cli eval --q Q.npy --k K.npy --v V.npy [--o O.npy] [options]

Runs dense attention and draft attention on one dumped layer and reports, per sparsity x policy
x estimator: the draft output's rel-L2 (and cosine, PSNR) against the dense output, the kept
share of video block pairs, the mask recall (share of the true attention mass of video queries
on video keys inside the kept blocks) and the oracle recall (the best any selection of as many
blocks reaches). With a reference output (--o, or a tensor "o" in the --in file) errors are
measured against it instead, and the dense op's own error against it is reported too.

Recall needs the dense attention probabilities in float64 on the CPU, one head at a time:
2 * videoTokens * tokens * headDim flops per (batch, head), about 2.6 minutes per head at Wan
480p (32,760 tokens x 128) on one x86 core; --recall-heads N limits it to the first N heads,
--no-recall skips it.

options (and the geometry options of run: --model, --frames, --height, --width, --text-tokens,
--text-position, --pool, --scale, --layout, --dtype, --backend):
  --in FILE              q, k, v (and o) from one .safetensors file, geometry from its metadata
  --o FILE               reference output (.npy or .safetensors), e.g. the model's own
  --sparsity LIST        comma-separated (default 0.75,0.9; or the file's / model's)
  --policy LIST          comma-separated policies (default percentile)
  --estimator LIST       comma-separated estimators (default draft)
  --tau X, --samples N   as for run
  --no-recall            skip mask and oracle recall (no CPU float64 pass)
  --recall-heads N       recall over heads 0..N-1 only (the CPU pass costs per head)
  --json                 one JSON object: inputs, dense, rows`,
  bench:
    `usage: deno task cli bench [bench options]   (forwards to bench/bench.ts; try --help there)`,
  demo: `usage: deno task cli demo [demo options]     (forwards to demo.ts)`,
};

/** Exits with a one-line reason. */
function fail(message: string, code = 1): never {
  console.error(`draftattn: ${message}`);
  Deno.exit(code);
}

function progress(message: string): void {
  console.error(`draftattn: ${message}`);
}

function backendOf(value: string | undefined): RuntimeOptions["backend"] {
  const b = value ?? "auto";
  if (b !== "auto" && b !== "webgpu" && b !== "wasm") {
    throw new DraftAttentionError(
      "UNSUPPORTED",
      "backend",
      `must be "auto", "webgpu" or "wasm", got "${b}"`,
    );
  }
  return b;
}

async function info(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      backend: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return console.log(HELP.info);
  const backend = backendOf(values.backend);
  let webgpu: Record<string, unknown> | null = null;
  if (backend !== "wasm") {
    const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
    if (adapter) {
      const limits: Record<string, number> = {};
      for (const key in adapter.limits) {
        const v = (adapter.limits as unknown as Record<string, unknown>)[key];
        if (typeof v === "number") limits[key] = v;
      }
      webgpu = {
        adapter: adapter.info.description || adapter.info.vendor || "unknown",
        vendor: adapter.info.vendor,
        architecture: adapter.info.architecture,
        fallback: (adapter.info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true,
        features: [...adapter.features].sort(),
        limits,
      };
    }
  }
  const rt = await openRuntime({ backend });
  const chosen = rt.describe();
  rt.dispose();
  const models = Object.values(MODELS).map((m) => ({
    name: m.name,
    title: m.title,
    tokens: m.frames * m.height * m.width + m.textTokens,
    heads: m.heads,
    headDim: m.headDim,
  }));
  if (values.json) {
    console.log(JSON.stringify({ chosen, webgpu, wasm: { available: true }, models }, null, 2));
    return;
  }
  const lines = [
    `backend:   ${chosen.backend} (${chosen.reason})`,
    `adapter:   ${chosen.adapter}`,
    `features:  ${chosen.features.join(", ") || "none"}`,
  ];
  if (chosen.limits) {
    lines.push(
      `limits:    ${Object.entries(chosen.limits).map(([k, v]) => `${k}=${v}`).join(", ")}`,
    );
  }
  lines.push(
    webgpu
      ? `webgpu:    ${webgpu.adapter}${webgpu.fallback ? " (software fallback)" : ""}; features ${
        (webgpu.features as string[]).join(", ") || "none"
      }`
      : `webgpu:    ${backend === "wasm" ? "not probed (--backend wasm)" : "no adapter"}`,
    `wasm:      available`,
    `models:    ${models.map((m) => m.name).join(", ")}`,
  );
  console.log(lines.join("\n"));
}

/** Reads into `buf` from `at` until it is full or the file ends; returns the bytes it holds. */
async function fill(file: Deno.FsFile, buf: Uint8Array, at = 0): Promise<number> {
  while (at < buf.length) {
    const n = await file.read(buf.subarray(at));
    if (n === null) break;
    at += n;
  }
  return at;
}

/**
 * The bytes of a `.npy` file, read with a bound: a regular file up to the size `stat` gives, and
 * anything else (a pipe, a device such as /dev/zero, whose end may never come) up to the length
 * its header announces: its first 10,012 bytes at most decide, so garbage fails at once.
 */
async function readNpyBytes(path: string): Promise<Uint8Array> {
  const file = await Deno.open(path, { read: true });
  try {
    const info = await file.stat();
    if (info.isFile) {
      const bytes = new Uint8Array(info.size);
      // A file that shrinks meanwhile comes out short, and parseNpy says it is truncated.
      return bytes.subarray(0, await fill(file, bytes));
    }
    const first = new Uint8Array(12);
    const got = await fill(file, first);
    // Version 1.0 keeps the header length in 2 bytes at offset 8 (data after 10 + it), later
    // versions in 4 (after 12 + it); parseNpy caps it at 10,000 bytes.
    const view = new DataView(first.buffer);
    const headerEnd = got < 12
      ? got
      : first[6] === 1
      ? 10 + view.getUint16(8, true)
      : 12 + Math.min(view.getUint32(8, true), 10_001);
    const head = new Uint8Array(Math.max(got, headerEnd));
    head.set(first.subarray(0, got));
    const headLen = got < 12 ? got : await fill(file, head, got);
    const total = npyFileBytes(head.subarray(0, headLen), { name: path });
    const bytes = new Uint8Array(total + 1); // one byte more: trailing data is an error
    bytes.set(head.subarray(0, Math.min(headLen, total)));
    const n = headLen > total ? headLen : await fill(file, bytes, headLen);
    return bytes.subarray(0, n);
  } finally {
    file.close();
  }
}

/** Reads the bytes of a tensor file (a non-regular one only as far as its npy header says). */
async function readBytes(flag: string, path: string | undefined): Promise<Uint8Array> {
  if (!path) throw new DraftAttentionError("INVALID_OPTION", `--${flag}`, "is required");
  let bytes: Uint8Array;
  try {
    bytes = await readNpyBytes(path);
  } catch (e) {
    if (e instanceof DraftAttentionError) throw e;
    throw new DraftAttentionError(
      "INVALID_INPUT",
      path,
      `cannot be read: ${(e as Error).message}`,
    );
  }
  progress(`read ${path} (${(bytes.length / 2 ** 20).toFixed(2)} MiB)`);
  return bytes;
}

const isSafetensors = (path: string) => /\.safetensors$/i.test(path);

/**
 * Reads the tensor of `--flag`: a `.npy` file, or a `.safetensors` file's tensor named `flag`
 * (or its only tensor), converted to `dtype` when given.
 */
async function readTensor(
  flag: string,
  path: string | undefined,
  dtype?: DType,
): Promise<Tensor> {
  const bytes = await readBytes(flag, path);
  if (!isSafetensors(path!)) return parseNpy(bytes, { name: path, dtype });
  const { tensors } = parseSafetensors(bytes, { name: path, dtype });
  const names = Object.keys(tensors);
  const t = Object.hasOwn(tensors, flag)
    ? tensors[flag]
    : names.length === 1
    ? tensors[names[0]]
    : undefined;
  if (!t) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      path!,
      `holds no tensor "${flag}" (tensors: ${names.join(", ") || "none"})`,
    );
  }
  return t;
}

/** Dtype flag: f32, f16 or absent. */
function dtypeOf(value: string | undefined): DType | undefined {
  if (value === undefined || value === "f32" || value === "f16") return value;
  throw new DraftAttentionError("UNSUPPORTED", "--dtype", `must be "f32" or "f16", got "${value}"`);
}

/** q, k, v (and a reference o, when there is one) and the metadata fields of `--in`. */
interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o?: Tensor;
  /** Request fields found in the `--in` file's metadata. */
  fields: Record<string, string>;
}

async function readInputs(
  values: { in?: string; q?: string; k?: string; v?: string; o?: string },
  dtype: DType | undefined,
): Promise<Inputs> {
  if (values.in === undefined) {
    const [q, k, v] = [
      await readTensor("q", values.q, dtype),
      await readTensor("k", values.k, dtype),
      await readTensor("v", values.v, dtype),
    ];
    const o = values.o === undefined ? undefined : await readTensor("o", values.o, dtype);
    return { q, k, v, o, fields: {} };
  }
  for (const f of ["q", "k", "v"] as const) {
    if (values[f] !== undefined) {
      throw new DraftAttentionError("INVALID_OPTION", `--${f}`, "cannot be combined with --in");
    }
  }
  const bytes = await readBytes("in", values.in);
  const { tensors, metadata } = parseSafetensors(bytes, { name: values.in, dtype });
  const pick = (name: string) => {
    if (!Object.hasOwn(tensors, name)) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        values.in!,
        `holds no tensor "${name}" (tensors: ${Object.keys(tensors).join(", ") || "none"})`,
      );
    }
    return tensors[name];
  };
  const fields: Record<string, string> = {};
  const ignored: string[] = [];
  for (const [key, value] of Object.entries(metadata)) {
    // A dump may carry more than the request (step, layer, prompt): only request fields count.
    if ((REQUEST_FIELDS as readonly string[]).includes(key) && key !== "mode") fields[key] = value;
    else if (key !== "format") ignored.push(key);
  }
  if (ignored.length) progress(`metadata not used: ${ignored.join(", ")}`);
  const o = values.o !== undefined
    ? await readTensor("o", values.o, dtype)
    : Object.hasOwn(tensors, "o")
    ? tensors.o
    : undefined;
  return { q: pick("q"), k: pick("k"), v: pick("v"), o, fields };
}

/** The `--in` file's metadata fields overridden by the flags that were given. */
function withFlags(
  metadata: Readonly<Record<string, string | undefined>>,
  flags: Record<string, string | undefined>,
): Record<string, string | undefined> {
  const out = { ...metadata };
  for (const [key, value] of Object.entries(flags)) if (value !== undefined) out[key] = value;
  return out;
}

/** The geometry and layout flags `run` and `eval` both map onto request fields. */
function geometryFlags(values: Record<string, string | boolean | undefined>) {
  const flag = (name: string) => values[name] as string | undefined;
  return {
    model: flag("model"),
    layout: flag("layout"),
    frames: flag("frames"),
    height: flag("height"),
    width: flag("width"),
    textTokens: flag("text-tokens"),
    textPosition: flag("text-position"),
    pool: flag("pool"),
    scale: flag("scale"),
  };
}

/** Selection options of the flags; each validated by the runtime when the op is built. */
function selectionOf(values: { tau?: string; samples?: string }): Partial<DraftAttentionOptions> {
  const out: Partial<DraftAttentionOptions> = {};
  if (values.tau !== undefined) out.tau = numberFlag("--tau", values.tau);
  if (values.samples !== undefined) out.samples = numberFlag("--samples", values.samples);
  return out;
}

function numberFlag(flag: string, value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) {
    throw new DraftAttentionError("INVALID_OPTION", flag, `must be a number, got "${value}"`);
  }
  return n;
}

/** The request of `fields` with policy / estimator / tau / samples added (draft only). */
function withSelection(
  request: AttentionRequest,
  selection: Partial<DraftAttentionOptions>,
): AttentionRequest {
  if (request.mode !== "draft") return request;
  const options = { ...request.options, ...selection };
  return { mode: "draft", options, key: JSON.stringify(["draft", options]) };
}

/** The flags `run` and `eval` share: the input files, the geometry and the op's options. */
const TENSOR_OPTIONS = {
  in: { type: "string" },
  q: { type: "string" },
  k: { type: "string" },
  v: { type: "string" },
  model: { type: "string" },
  frames: { type: "string" },
  height: { type: "string" },
  width: { type: "string" },
  "text-tokens": { type: "string" },
  "text-position": { type: "string" },
  pool: { type: "string" },
  sparsity: { type: "string" },
  policy: { type: "string" },
  estimator: { type: "string" },
  tau: { type: "string" },
  samples: { type: "string" },
  scale: { type: "string" },
  layout: { type: "string" },
  dtype: { type: "string" },
  backend: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...TENSOR_OPTIONS,
      out: { type: "string", short: "o" },
      "mask-out": { type: "string" },
      dense: { type: "boolean" },
    },
  });
  if (values.help) return console.log(HELP.run);
  if (!values.out) throw new DraftAttentionError("INVALID_OPTION", "--out", "is required");
  const backend = backendOf(values.backend);
  const dtype = dtypeOf(values.dtype);
  if (values.dense && values["mask-out"] !== undefined) {
    throw new DraftAttentionError("INVALID_OPTION", "--mask-out", "dense attention has no mask");
  }
  const { q, k, v, fields } = await readInputs(values, dtype);
  const built = buildRequest({
    q,
    k,
    v,
    fields: withFlags(fields, {
      mode: values.dense ? "dense" : "draft",
      ...geometryFlags(values),
      sparsity: values.sparsity,
    }),
  });
  const request = withSelection(built, {
    ...(values.policy === undefined ? {} : { policy: values.policy as Policy }),
    ...(values.estimator === undefined ? {} : { estimator: values.estimator as Estimator }),
    ...selectionOf(values),
  });
  const rt = await openRuntime({ backend });
  try {
    progress(`${request.mode} attention on ${rt.backend} (${rt.describe().adapter})`);
    const result = await runOnce(rt, request, { q, k, v });
    const out: Tensor = { dtype: q.dtype, shape: q.shape, data: result.out };
    await Deno.writeFile(values.out, encodeNpy(out));
    progress(`wrote ${values.out}`);
    if (values["mask-out"] !== undefined && result.mask) {
      const { batch = 1, heads } = request.options as DraftAttentionOptions;
      const g = result.g!;
      await Deno.writeFile(
        values["mask-out"],
        encodeNpyU8({ shape: [batch, heads!, g, g], data: result.mask }),
      );
      progress(`wrote ${values["mask-out"]}`);
    }
    const summary = {
      out: values.out,
      shape: q.shape,
      dtype: q.dtype,
      mode: request.mode,
      backend: result.backend,
      ms: Number(result.ms.toFixed(3)),
      ...(result.density === undefined ? {} : { density: result.density, g: result.g }),
    };
    if (values.json) console.log(JSON.stringify(summary));
    else {
      console.log(
        `${values.out}: ${q.dtype} [${q.shape.join(", ")}], ${request.mode} on ${result.backend}` +
          ` in ${summary.ms} ms` +
          (result.density === undefined
            ? ""
            : `, ${result.g} blocks, density ${result.density.toFixed(4)}`),
      );
    }
  } finally {
    rt.dispose();
  }
}

/** What one run of a request produced. */
interface RunResult {
  out: TensorArray;
  backend: BackendKind;
  /** Time of `op.run()` alone, in milliseconds. */
  ms: number;
  /** The op's resolved request. */
  spec: DenseSpec | DraftSpec;
  /** Draft only: the block mask `[batch, heads, g, g]`, its density and `g`. */
  mask?: Uint8Array;
  density?: number;
  g?: number;
}

/** Builds the request's op, runs it once on q, k, v, reads the mask of a draft run. */
async function runOnce(
  rt: Runtime,
  request: AttentionRequest,
  t: { q: Tensor; k: Tensor; v: Tensor },
): Promise<RunResult> {
  const op = request.mode === "dense"
    ? rt.attention(request.options)
    : rt.draftAttention(request.options);
  try {
    const t0 = performance.now();
    const out = await op.run(t.q.data, t.k.data, t.v.data);
    const ms = performance.now() - t0;
    const spec = op.spec;
    if (request.mode === "dense") return { out, backend: rt.backend, ms, spec };
    const { mask, density, g } = await (op as DraftAttentionOp).lastMask();
    return { out, backend: rt.backend, ms, spec, mask, density, g };
  } finally {
    op.dispose();
  }
}

/**
 * Heads `0 .. n-1` of a `[batch, tokens, heads, headDim]` (BSHD) or `[batch, heads, tokens,
 * headDim]` (BHSD) array, in the same layout; the array itself when `n` is every head.
 */
function firstHeads<T extends ArrayLike<number> & { subarray(a: number, b: number): T }>(
  x: T,
  spec: { batch: number; tokens: number; heads: number; headDim: number; layout: string },
  n: number,
): T {
  const { batch: B, tokens: N, heads: H, headDim: D } = spec;
  if (n === H) return x;
  const parts: T[] = [];
  for (let b = 0; b < B; b++) {
    if (spec.layout === "BHSD") parts.push(x.subarray(b * H * N * D, (b * H + n) * N * D));
    else {
      for (let t = 0; t < N; t++) {
        const at = ((b * N + t) * H) * D;
        parts.push(x.subarray(at, at + n * D));
      }
    }
  }
  const out = new (x.constructor as new (n: number) => T & { set(a: T, at: number): void })(
    parts.reduce((s, p) => s + p.length, 0),
  );
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A comma-separated flag as a list (empty items rejected). */
function listOf(flag: string, value: string): string[] {
  const items = value.split(",").map((x) => x.trim());
  if (items.some((x) => x === "")) {
    throw new DraftAttentionError("INVALID_OPTION", flag, `has an empty item: "${value}"`);
  }
  return items;
}

const round = (x: number, digits = 6) => Number(x.toPrecision(digits));

async function evaluate(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...TENSOR_OPTIONS,
      o: { type: "string" },
      "no-recall": { type: "boolean" },
      "recall-heads": { type: "string" },
    },
  });
  if (values.help) return console.log(HELP.eval);
  const backend = backendOf(values.backend);
  const dtype = dtypeOf(values.dtype);
  const inputs = await readInputs(values, dtype);
  const { q, k, v, o } = inputs;
  if (o && (o.shape.join() !== q.shape.join() || o.dtype !== q.dtype)) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "o",
      `${o.dtype} [${o.shape.join(", ")}] differs from q's ${q.dtype} [${q.shape.join(", ")}]`,
    );
  }
  const fields = withFlags(inputs.fields, geometryFlags(values));
  const sparsities = values.sparsity !== undefined
    ? listOf("--sparsity", values.sparsity)
    : inputs.fields.sparsity !== undefined || values.model !== undefined
    ? [undefined]
    : ["0.75", "0.9"];
  const policies = listOf("--policy", values.policy ?? "percentile") as Policy[];
  const estimators = listOf("--estimator", values.estimator ?? "draft") as Estimator[];
  const selection = selectionOf(values);
  const requests: AttentionRequest[] = [];
  for (const sparsity of sparsities) {
    for (const policy of policies) {
      for (const estimator of estimators) {
        const built = buildRequest({ q, k, v, fields: withFlags(fields, { sparsity }) });
        requests.push(withSelection(built, { policy, estimator, ...selection }));
      }
    }
  }
  const dense = buildRequest({ q, k, v, fields: { ...fields, mode: "dense" } });
  const rt = await openRuntime({ backend });
  try {
    progress(`eval on ${rt.backend} (${rt.describe().adapter})`);
    const denseRun = await runOnce(rt, dense, { q, k, v });
    const reference = o ? o.data : denseRun.out;
    const rows = [];
    for (const request of requests) {
      const r = await runOnce(rt, request, { q, k, v });
      rows.push({ spec: r.spec as DraftSpec, run: r, error: compareOutputs(reference, r.out) });
    }
    const spec = rows[0].spec;
    let recall: { mask: number; min: number; oracle: number }[] | undefined;
    let recallHeads: number | undefined;
    if (!values["no-recall"]) {
      progress("dense attention probabilities in float64 on the CPU (recall; --no-recall skips)");
      let last = 0;
      // --recall-heads n: the float64 pass on heads 0..n-1 only (its cost is per head).
      const nh = values["recall-heads"] === undefined
        ? spec.heads
        : Math.min(spec.heads, numberFlag("--recall-heads", values["recall-heads"]));
      if (!(Number.isInteger(nh) && nh >= 1)) {
        throw new DraftAttentionError(
          "INVALID_OPTION",
          "--recall-heads",
          `must be an integer >= 1, got "${values["recall-heads"]}"`,
        );
      }
      recallHeads = nh;
      const t0 = performance.now();
      const stats = denseStats(firstHeads(q.data, spec, nh), firstHeads(k.data, spec, nh), {
        batch: spec.batch,
        heads: nh,
        headDim: spec.headDim,
        layout: spec.layout,
        frames: spec.frames,
        height: spec.height,
        width: spec.width,
        textTokens: spec.textTokens,
        textPosition: spec.textPosition,
        pool: [spec.poolH, spec.poolW],
        scale: spec.scale,
      }, {
        onProgress: (done, total) => {
          const now = performance.now();
          if (now - last > 2000 || done === total) {
            last = now;
            progress(`recall: ${done} / ${total} heads`);
          }
        },
      });
      progress(`recall: ${((performance.now() - t0) / 1000).toFixed(1)} s for ${nh} head(s)`);
      recall = rows.map(({ run }) => {
        // The mask [batch, heads, g, g] as a BHSD array of g^2 "tokens" of one channel.
        const g2 = run.g! * run.g!;
        const mask = firstHeads(run.mask!, { ...spec, layout: "BHSD", tokens: g2, headDim: 1 }, nh);
        const m = maskRecall(stats, mask);
        return { mask: m.mean, min: m.min, oracle: oracleRecall(stats, m.kept).mean };
      });
    }
    const versus = o ? "reference o" : "dense";
    const result = {
      inputs: {
        q: q.shape,
        dtype: q.dtype,
        layout: spec.layout,
        geometry: {
          frames: spec.frames,
          height: spec.height,
          width: spec.width,
          textTokens: spec.textTokens,
          textPosition: spec.textPosition,
          pool: [spec.poolH, spec.poolW],
        },
        g: rows[0].run.g,
        backend: rt.backend,
        versus,
        ...(recallHeads === undefined ? {} : { recallHeads }),
      },
      dense: {
        ms: round(denseRun.ms, 4),
        ...(o ? { relL2VsReference: round(compareOutputs(o.data, denseRun.out).relL2) } : {}),
      },
      rows: rows.map(({ spec, run, error }, i) => ({
        sparsity: spec.sparsity,
        policy: spec.policy,
        estimator: spec.estimator ?? "draft",
        density: round(run.density!),
        ms: round(run.ms, 4),
        relL2: round(error.relL2),
        cosine: round(error.cosine),
        psnr: round(error.psnr, 4),
        ...(recall
          ? {
            recall: round(recall[i].mask),
            recallMin: round(recall[i].min),
            oracleRecall: round(recall[i].oracle),
          }
          : {}),
      })),
    };
    if (values.json) return console.log(JSON.stringify(result));
    const lines = [
      `${q.dtype} [${
        q.shape.join(", ")
      }] ${spec.layout}, ${spec.frames}x${spec.height}x${spec.width}` +
      ` video + ${spec.textTokens} text, g ${result.inputs.g}, on ${rt.backend}; errors vs ${versus}`,
      `dense: ${result.dense.ms} ms` +
      (o ? `, rel-L2 vs reference ${result.dense.relL2VsReference}` : ""),
      "sparsity  policy      estimator  density   rel-L2    cosine    PSNR dB" +
      (recall ? "  recall  oracle" : ""),
    ];
    for (const r of result.rows) {
      lines.push(
        `${String(r.sparsity).padEnd(8)}  ${r.policy.padEnd(10)}  ${r.estimator.padEnd(9)}  ` +
          `${r.density.toFixed(4)}    ${r.relL2.toFixed(4)}    ${r.cosine.toFixed(4)}    ` +
          `${r.psnr.toFixed(2).padStart(6)}` +
          (r.recall === undefined ? "" : `  ${r.recall.toFixed(4)}  ${r.oracleRecall!.toFixed(4)}`),
      );
    }
    console.log(lines.join("\n"));
  } finally {
    rt.dispose();
  }
}

/** Runs `file` (relative to this module) in a child Deno with the remaining arguments. */
async function forward(command: string, file: string, args: string[]): Promise<void> {
  const url = new URL(file, import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    if (args.includes("--help") || args.includes("-h")) return console.log(HELP[command]);
    fail(`${command} is not available: ${file} is not in this checkout`);
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", url.href, ...args],
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const status = await child.status;
  if (status.code !== 0) Deno.exit(status.code);
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    console.log(HELP.main);
    return;
  }
  switch (command) {
    case "info":
      return await info(rest);
    case "run":
      return await run(rest);
    case "eval":
      return await evaluate(rest);
    case "bench":
      return await forward("bench", "./bench/bench.ts", rest);
    case "demo":
      return await forward("demo", "./demo.ts", rest);
    default:
      fail(`unknown command "${command}"; commands: info, run, eval, bench, demo (see --help)`, 2);
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    // parseArgs throws TypeErrors with a code such as ERR_PARSE_ARGS_UNKNOWN_OPTION.
    const usage = (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    fail((e as Error).message.split("\n")[0], usage ? 2 : 1);
  }
}
