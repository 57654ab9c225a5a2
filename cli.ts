/**
 * Command line: `deno run -A cli.ts <command>` (or `deno task cli <command>`).
 *
 * - `info`: backends, adapter, limits, features, bundled models.
 * - `run`: attention on `.npy` files: `run --q q.npy --k k.npy --v v.npy --out out.npy` with a
 *   `--model` and/or the geometry flags, or `--dense`.
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
import { encodeNpy, npyFileBytes, parseNpy } from "./src/npy.ts";
import { openRuntime, type RuntimeOptions } from "./src/runtime.ts";
import { buildRequest, runRequest } from "./src/_request.ts";
import type { Tensor } from "./src/_tensor.ts";

const HELP: Record<string, string> = {
  main: `draftattn: DraftAttention on WebGPU and WebAssembly

usage: deno task cli <command> [options]      (or: deno run -A cli.ts <command>)

commands:
  info     backends, adapter, limits, features and bundled models
  run      draft (or dense) attention on .npy files
  bench    benchmarks (forwards to bench/bench.ts)
  demo     demo (forwards to demo.ts)

Run 'deno task cli <command> --help' for a command's options.`,
  info: `usage: deno task cli info [--backend auto|webgpu|wasm] [--json]

Prints the backend that would be chosen (and why), the WebGPU adapter if any, its limits and
features, and the bundled model profiles.`,
  run: `usage: deno task cli run --q Q.npy --k K.npy --v V.npy --out OUT.npy [options]

q, k, v: .npy files, f32 (<f4) or f16 (<f2), shape [batch, tokens, heads, headDim] (BSHD) or
[batch, heads, tokens, headDim] (--layout BHSD). out has the same dtype, shape and layout.

options:
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

async function readTensor(flag: string, path: string | undefined): Promise<Tensor> {
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
  return parseNpy(bytes, { name: path });
}

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      q: { type: "string" },
      k: { type: "string" },
      v: { type: "string" },
      out: { type: "string", short: "o" },
      model: { type: "string" },
      frames: { type: "string" },
      height: { type: "string" },
      width: { type: "string" },
      "text-tokens": { type: "string" },
      "text-position": { type: "string" },
      pool: { type: "string" },
      sparsity: { type: "string" },
      scale: { type: "string" },
      layout: { type: "string" },
      dense: { type: "boolean" },
      backend: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return console.log(HELP.run);
  if (!values.out) throw new DraftAttentionError("INVALID_OPTION", "--out", "is required");
  const backend = backendOf(values.backend);
  const q = await readTensor("q", values.q);
  const k = await readTensor("k", values.k);
  const v = await readTensor("v", values.v);
  const request = buildRequest({
    q,
    k,
    v,
    fields: {
      mode: values.dense ? "dense" : "draft",
      model: values.model,
      layout: values.layout,
      frames: values.frames,
      height: values.height,
      width: values.width,
      textTokens: values["text-tokens"],
      textPosition: values["text-position"],
      pool: values.pool,
      sparsity: values.sparsity,
      scale: values.scale,
    },
  });
  const rt = await openRuntime({ backend });
  try {
    progress(`${request.mode} attention on ${rt.backend} (${rt.describe().adapter})`);
    const result = await runRequest({ runtime: rt, request, q, k, v });
    const out: Tensor = { dtype: q.dtype, shape: q.shape, data: result.out };
    await Deno.writeFile(values.out, encodeNpy(out));
    progress(`wrote ${values.out}`);
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
    case "bench":
      return await forward("bench", "./bench/bench.ts", rest);
    case "demo":
      return await forward("demo", "./demo.ts", rest);
    default:
      fail(`unknown command "${command}"; commands: info, run, bench, demo (see --help)`, 2);
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
