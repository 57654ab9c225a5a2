/**
 * The onnxruntime-web peer of `deno task bench`: ORT-web's WebGPU execution provider (the
 * native WebGPU EP of `onnxruntime-web/webgpu`, 1.30.0) running a one-node `com.microsoft`
 * MultiHeadAttention model (bench/_onnx.ts) on the same inputs as our dense row.
 *
 * - Same device: the session gets our `GPUDevice` through the WebGPU EP's `device` option, so
 *   ORT reads our q, k, v `GPUBuffer`s (`Tensor.fromGpuBuffer`, no upload) and writes a
 *   `GPUBuffer` of ours (a pre-allocated output, no readback). Timing is ours: a warm-up run,
 *   then `reps` runs and one `onSubmittedWorkDone`, ms per run.
 * - Same dtype: f16 tensors for f16 rows (ORT's WebGPU MultiHeadAttention takes FLOAT16), f32
 *   for f32 rows; layout BSHD, read by MultiHeadAttention as [batch, tokens, heads * headDim];
 *   the scale of our spec.
 * - Error: max |diff| and rel-L2 of ORT's output against our dense output, the whole tensor,
 *   reduced on the GPU; and, where cheap enough, both outputs against a float64 attention of
 *   a few sampled query tokens (every head) computed here from the CPU inputs.
 * - Budget: from 8,192 tokens on, a probe run on the first 8,192 tokens estimates a run's time
 *   (FLOPs grow as tokens^2); a row whose warm-up and one run would pass `budgetS` is skipped
 *   with the estimate, and the timed runs are cut to fit the budget.
 *
 * Loading: a dynamic import, so the bench runs where ORT is missing. `DRAFTATTN_ORT` names the
 * bundle file (`ort.webgpu.bundle.min.mjs`) of a local copy holding
 * `ort-wasm-simd-threaded.asyncify.wasm` next to it (scripts/pack_ort.sh makes one); without
 * it, `npm:onnxruntime-web@1.30.0/webgpu` (a benchmark-only dependency, not in deno.json).
 */
import { pathToFileURL } from "node:url";
import { mhaModel } from "./_onnx.ts";
import type { DenseSpec, TensorArray } from "../src/types.ts";

/** The npm build used without `DRAFTATTN_ORT`. */
export const ORT_NPM = "npm:onnxruntime-web@1.30.0/webgpu";
/** The WebAssembly file of the native WebGPU EP build, next to the bundle. */
export const ORT_WASM = "ort-wasm-simd-threaded.asyncify.wasm";
const PROBE_TOKENS = 8192;

/** The part of onnxruntime-web's API used here. */
interface OrtTensor {
  dispose(): void;
}
interface OrtSession {
  run(
    feeds: Record<string, OrtTensor>,
    fetches?: Record<string, OrtTensor>,
  ): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface Ort {
  env: {
    logLevel?: string;
    versions: { web?: string };
    wasm: { numThreads?: number; proxy?: boolean; wasmBinary?: unknown };
  };
  Tensor: {
    fromGpuBuffer(
      buffer: GPUBuffer,
      opts: { dataType: "float16" | "float32"; dims: readonly number[] },
    ): OrtTensor;
  };
  InferenceSession: { create(model: Uint8Array, opts: unknown): Promise<OrtSession> };
}

let loading: Promise<{ ort: Ort; from: string }> | undefined;

/** Imports onnxruntime-web once (`DRAFTATTN_ORT` or npm); rejects when it cannot. */
export function loadOrt(): Promise<{ ort: Ort; from: string }> {
  loading ??= (async () => {
    const path = Deno.env.get("DRAFTATTN_ORT");
    let ort: Ort;
    let from: string;
    if (path) {
      const url = pathToFileURL(path);
      ort = await import(url.href) as Ort;
      // Its wasm from the same folder, never from the network (no wasmPaths: with one, the
      // bundle would import its JavaScript glue from there too instead of its embedded copy).
      ort.env.wasm.wasmBinary = await Deno.readFile(new URL(ORT_WASM, url));
      from = path;
    } else {
      const specifier: string = ORT_NPM; // not a literal: no install unless used
      ort = await import(specifier) as Ort;
      from = ORT_NPM;
    }
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = "error";
    return { ort, from };
  })();
  return loading;
}

/** What the peer row measures. */
export interface OrtPeerArgs {
  device: GPUDevice;
  spec: DenseSpec;
  /** Our inputs, and `out` holding our dense output on the same inputs. */
  bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer };
  /** The same inputs on the CPU, for the float64 check of sampled rows. */
  cpu?: { q: TensorArray; k: TensorArray; v: TensorArray };
  reps: number;
  /** Seconds for the warm-up and the timed runs together. */
  budgetS: number;
}

/** The peer's measurement; `ms` is NaN when it did not run (`note` says why). */
export interface OrtPeerResult {
  ms: number;
  /** max |ORT - ours| over the whole output (our dense row). */
  error?: number;
  /** ||ORT - ours|| / ||ours||. */
  relL2?: number;
  /** Non-finite values in ORT's output. */
  nonFinite?: number;
  /** Sampled query tokens (every head) checked against float64 attention. */
  refTokens?: number;
  /** max |ORT - float64| on those tokens. */
  refError?: number;
  /** max |ours - float64| on those tokens. */
  oursRefError?: number;
  /** Timed runs. */
  reps?: number;
  note: string;
}

/**
 * Our device as ORT sees it: the same GPUDevice, minus the `subgroups` feature. With it ORT
 * writes `enable subgroups;` into its FlashAttention shader, which naga (Deno's WGSL compiler)
 * rejects; a device ORT requests itself never has it (Deno's adapter does not list it).
 */
function withoutSubgroups(device: GPUDevice): GPUDevice {
  const features = new Set([...device.features].filter((f) => f !== "subgroups"));
  return new Proxy(device, {
    get(target, prop) {
      if (prop === "features") return features;
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
    set: (target, prop, value) => Reflect.set(target, prop, value, target),
  });
}

const firstLine = (e: unknown) =>
  ((e as Error)?.message ?? String(e)).split("\n").find((l) => l.trim())?.trim().slice(0, 160) ??
    String(e);

/** Runs ORT's MultiHeadAttention on `args.bufs` and compares it with `args.bufs.out`. */
export async function ortPeer(args: OrtPeerArgs): Promise<OrtPeerResult> {
  const { device, spec } = args;
  if (spec.layout !== "BSHD") return { ms: NaN, note: "skipped: BSHD layout only" };
  let ort: Ort, from: string;
  try {
    ({ ort, from } = await loadOrt());
  } catch (e) {
    return { ms: NaN, note: `onnxruntime-web not loaded: ${firstLine(e)}` };
  }
  const { batch, tokens, heads, headDim, dtype } = spec;
  const bytes = dtype === "f16" ? 2 : 4;
  const dataType = dtype === "f16" ? "float16" : "float32";
  const own: GPUBuffer[] = [];
  const buffer = (size: number) => {
    const b = device.createBuffer({
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    own.push(b);
    return b;
  };
  const sync = () => device.queue.onSubmittedWorkDone();
  const ortDevice = withoutSubgroups(device);
  /** A session on `n` tokens of batch `b`, inputs and output bound to GPUBuffers. */
  const open = async (b: number, n: number, io: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer }) => {
    const model = mhaModel(b, n, heads, headDim, { float16: dtype === "f16", scale: spec.scale });
    const session = await ort.InferenceSession.create(model, {
      executionProviders: [{ name: "webgpu", device: ortDevice }],
      preferredOutputLocation: "gpu-buffer",
    });
    const dims = [b, n, heads * headDim];
    const t = (x: GPUBuffer) => ort.Tensor.fromGpuBuffer(x, { dataType, dims });
    const out = buffer(b * n * heads * headDim * bytes);
    const feeds = { q: t(io.q), k: t(io.k), v: t(io.v) };
    const fetches = { o: t(out) };
    return { session, out, run: () => session.run(feeds, fetches) };
  };
  const sessions: OrtSession[] = [];
  try {
    // Estimate a run from the first PROBE_TOKENS tokens when the shape is larger.
    const budgetMs = args.budgetS * 1000;
    const flops = 4 * batch * heads * tokens * tokens * headDim;
    if (tokens > PROBE_TOKENS) {
      const size = PROBE_TOKENS * heads * headDim * bytes;
      const io = { q: buffer(size), k: buffer(size), v: buffer(size) };
      const enc = device.createCommandEncoder();
      for (const x of ["q", "k", "v"] as const) {
        enc.copyBufferToBuffer(args.bufs[x], 0, io[x], 0, size);
      }
      device.queue.submit([enc.finish()]);
      const probe = await open(1, PROBE_TOKENS, io);
      sessions.push(probe.session);
      await probe.run();
      await sync();
      const t0 = performance.now();
      await probe.run();
      await sync();
      const probeMs = performance.now() - t0;
      const estimate = probeMs * flops / (4 * heads * PROBE_TOKENS ** 2 * headDim);
      if (2 * estimate > budgetMs) {
        return {
          ms: NaN,
          note:
            `skipped: ~${(estimate / 1000).toFixed(estimate < 1e4 ? 1 : 0)} s a run (${
              (flops / estimate / 1e9).toFixed(3)
            } TFLOP/s at ${PROBE_TOKENS} tokens); warm-up + 1 run > --peer-budget ` +
            `${args.budgetS} s`,
        };
      }
    }
    const peer = await open(batch, tokens, args.bufs);
    sessions.push(peer.session);
    let t0 = performance.now();
    await peer.run(); // warm-up: pipelines
    await sync();
    const warmMs = performance.now() - t0;
    const reps = Math.max(1, Math.min(args.reps, Math.floor((budgetMs - warmMs) / warmMs)));
    t0 = performance.now();
    for (let r = 0; r < reps; r++) await peer.run();
    await sync();
    const ms = (performance.now() - t0) / reps;
    const r: OrtPeerResult = {
      ms,
      reps,
      ...await compare(device, dtype === "f16", peer.out, args.bufs.out),
      ...args.cpu ? await sampledReference(args, peer.out) : {},
      note: "",
    };
    const e = (x: number) => x.toExponential(1);
    r.note = [
      `rel-L2 ${e(r.relL2!)} vs dense`,
      r.nonFinite ? `${r.nonFinite} non-finite` : "",
      r.refTokens
        ? `vs float64 at ${r.refTokens} token${r.refTokens > 1 ? "s" : ""}: ORT ${
          e(r.refError!)
        }, ours ${e(r.oursRefError!)}`
        : "",
      `our GPUDevice (subgroups hidden), GPUBuffers in/out, ${reps} run${reps > 1 ? "s" : ""}`,
      `onnxruntime-web ${ort.env.versions.web} from ${from === ORT_NPM ? "npm" : from}`,
    ].filter(Boolean).join("; ");
    return r;
  } catch (e) {
    return { ms: NaN, note: `failed: ${firstLine(e)}` };
  } finally {
    for (const s of sessions) await s.release().catch(() => {});
    await sync();
    for (const b of own) b.destroy();
  }
}

const DIFF_WGSL = (f16: boolean) => `
@group(0) @binding(0) var<storage, read> a: array<${f16 ? "u32" : "f32"}>;
@group(0) @binding(1) var<storage, read> b: array<${f16 ? "u32" : "f32"}>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
var<workgroup> red: array<vec4<f32>, 256>;

// 1 for an infinity or a NaN (exponent bits all set), per f32 lane or f16 half.
fn bad(bits: u32) -> vec2<f32> {
  ${
  f16
    ? "return vec2<f32>(f32((bits & 0x7c00u) == 0x7c00u), f32((bits & 0x7c000000u) == 0x7c000000u));"
    : "return vec2<f32>(f32((bits & 0x7f800000u) == 0x7f800000u), 0.0);"
}
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  // (max |a - b|, sum (a - b)^2, sum b^2, non-finite values of a)
  var acc = vec4<f32>(0.0);
  let n = arrayLength(&a);
  for (var i = wg.x * 256u + li; i < n; i += nwg.x * 256u) {
    ${
  f16
    ? "let x = unpack2x16float(a[i]); let y = unpack2x16float(b[i]); let nb = bad(a[i]);"
    : "let x = vec2<f32>(a[i], 0.0); let y = vec2<f32>(b[i], 0.0); let nb = bad(bitcast<u32>(a[i]));"
}
    let d = select(abs(x - y), vec2<f32>(0.0), nb > vec2<f32>(0.0));
    acc = vec4<f32>(max(acc.x, max(d.x, d.y)), acc.y + dot(d, d), acc.z + dot(y, y),
                    acc.w + nb.x + nb.y);
  }
  red[li] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) {
      let o = red[li + s];
      red[li] = vec4<f32>(max(red[li].x, o.x), red[li].yzw + o.yzw);
    }
    workgroupBarrier();
  }
  if (li == 0u) {
    part[wg.x * 4u] = red[0].x;
    part[wg.x * 4u + 1u] = red[0].y;
    part[wg.x * 4u + 2u] = red[0].z;
    part[wg.x * 4u + 3u] = red[0].w;
  }
}`;

/** max |a - b|, rel-L2 against b and non-finite values of a, reduced on the GPU. */
async function compare(
  device: GPUDevice,
  f16: boolean,
  a: GPUBuffer,
  b: GPUBuffer,
): Promise<Pick<OrtPeerResult, "error" | "relL2" | "nonFinite">> {
  const words = a.size / 4;
  const groups = Math.max(1, Math.min(1024, Math.ceil(words / 256)));
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module: device.createShaderModule({ code: DIFF_WGSL(f16) }), entryPoint: "main" },
  });
  const part = device.createBuffer({
    size: groups * 16,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size: groups * 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const bind = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [a, b, part].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(groups);
    pass.end();
    enc.copyBufferToBuffer(part, 0, read, 0, groups * 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const p = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    let error = 0, d2 = 0, r2 = 0, nonFinite = 0;
    for (let g = 0; g < groups; g++) {
      error = Math.max(error, p[4 * g]);
      d2 += p[4 * g + 1];
      r2 += p[4 * g + 2];
      nonFinite += p[4 * g + 3];
    }
    return { error: nonFinite ? NaN : error, relL2: Math.sqrt(d2 / r2), nonFinite };
  } finally {
    part.destroy();
    read.destroy();
  }
}

/**
 * Both outputs against float64 attention at a few query tokens of batch 0 (every head): at
 * most 8 tokens, and as many as keep the work near 2^27 multiply-adds; none on large shapes.
 */
async function sampledReference(
  args: OrtPeerArgs,
  ortOut: GPUBuffer,
): Promise<Pick<OrtPeerResult, "refTokens" | "refError" | "oursRefError">> {
  const { device, spec } = args;
  const { tokens: N, heads: H, headDim: D } = spec;
  const { q, k, v } = args.cpu!;
  const count = Math.min(8, N, Math.floor(2 ** 27 / (N * H * D)));
  if (count < 1) return {};
  const rowBytes = H * D * (spec.dtype === "f16" ? 2 : 4);
  const picks = Array.from({ length: count }, (_, r) => Math.floor((r + 0.5) * N / count));
  const read = device.createBuffer({
    size: 2 * count * rowBytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  picks.forEach((t, r) => {
    enc.copyBufferToBuffer(ortOut, t * rowBytes, read, r * rowBytes, rowBytes);
    enc.copyBufferToBuffer(args.bufs.out, t * rowBytes, read, (count + r) * rowBytes, rowBytes);
  });
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const copy = read.getMappedRange().slice(0);
  read.unmap();
  read.destroy();
  const got = spec.dtype === "f16" ? new Float16Array(copy) : new Float32Array(copy);
  const scale = Math.fround(spec.scale);
  const s = new Float64Array(N), qi = new Float64Array(D), acc = new Float64Array(D);
  let refError = 0, oursRefError = 0;
  picks.forEach((t, r) => {
    for (let h = 0; h < H; h++) {
      for (let d = 0; d < D; d++) qi[d] = q[t * H * D + h * D + d];
      let m = -Infinity;
      for (let j = 0; j < N; j++) {
        const o = j * H * D + h * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qi[d] * k[o + d];
        s[j] = dot * scale;
        if (s[j] > m) m = s[j];
      }
      let z = 0;
      acc.fill(0);
      for (let j = 0; j < N; j++) {
        const p = Math.exp(s[j] - m);
        z += p;
        const o = j * H * D + h * D;
        for (let d = 0; d < D; d++) acc[d] += p * v[o + d];
      }
      for (let d = 0; d < D; d++) {
        const want = acc[d] / z;
        const i = r * H * D + h * D + d;
        const eo = Math.abs(got[i] - want), eu = Math.abs(got[count * H * D + i] - want);
        refError = eo <= refError ? refError : eo; // NaN wins
        oursRefError = eu <= oursRefError ? oursRefError : eu;
      }
    }
  });
  return { refTokens: count, refError, oursRefError };
}
