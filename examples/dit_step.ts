/**
 * DiT denoising steps in Deno: onnxruntime-web runs the rest of each transformer block on the
 * same `GPUDevice` as draftattn, with GPU-buffer inputs and outputs, and draftattn runs the
 * self-attention on those buffers. `createStepSchedule` picks dense or draft attention per
 * (step, layer). Nothing is read back between the parts; at the end the result is compared
 * with a float64 CPU reference of the same computation (the draft steps with the masks the op
 * chose, read with `lastMask()`).
 *
 *   deno task example:dit        (deno run -A examples/dit_step.ts [--steps 4] [--layers 2])
 *
 * A dev-only example: it imports `npm:onnxruntime-web@1.30.0/webgpu` (fetched from the npm
 * registry on first use; draftattn itself needs no package). It needs a WebGPU adapter; a
 * software one (llvmpipe) runs it, slowly. Sizes are tiny: 2 latent frames of 8 x 16 tokens,
 * 2 heads of 16 channels, 4 x 8 windows (8 blocks).
 *
 * The block here is the part of a DiT block around self-attention, reduced to the shape of the
 * data flow: `q, k, v = x Wq, x Wk, x Wv` (one ONNX session per layer, outputs written into
 * draftattn's input buffers), attention, `x = x + attn Wo` (a second session). A real model
 * adds norms, RoPE, modulation and the MLP to those two graphs; the buffers stay the same.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createStepSchedule, type DraftAttentionOp, openRuntime } from "../mod.ts";
import type { AttentionOp } from "../mod.ts";
import { onnxModel } from "./_onnx.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { steps: { type: "string", default: "4" }, layers: { type: "string", default: "2" } },
});
const STEPS = Number(values.steps), LAYERS = Number(values.layers);
const GEOM = { frames: 2, height: 8, width: 16, heads: 2, headDim: 16 };
const POOL = [4, 8] as const;
const SPARSITY = 0.5;
const N = GEOM.frames * GEOM.height * GEOM.width; // tokens (no text tokens here)
const C = GEOM.heads * GEOM.headDim; // model width: BSHD [1, N, heads, headDim] is [1, N, C]

// ------------------------------------------------------------------------------------------
// onnxruntime-web on draftattn's device
// ------------------------------------------------------------------------------------------

interface OrtTensor {
  dispose(): void;
}
interface OrtSession {
  run(
    feeds: Record<string, OrtTensor>,
    fetches: Record<string, OrtTensor>,
  ): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface Ort {
  env: { logLevel?: string; wasm: { numThreads?: number; proxy?: boolean } };
  Tensor: {
    fromGpuBuffer(b: GPUBuffer, o: { dataType: "float32"; dims: readonly number[] }): OrtTensor;
  };
  InferenceSession: { create(model: Uint8Array, options: unknown): Promise<OrtSession> };
}
// A variable specifier: `deno check` of the repository does not fetch onnxruntime-web.
const ORT_NPM: string = "npm:onnxruntime-web@1.30.0/webgpu";
const ort = await import(ORT_NPM) as Ort;
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;
ort.env.logLevel = "error";

// draftattn on WebGPU (a software adapter too: "auto" would choose WebAssembly there).
const rt = await openRuntime({ backend: "webgpu" });
const device = rt.device!;

/**
 * The device as ORT sees it: without `subgroups`. With it, ORT's shaders `enable subgroups;`,
 * which Deno's WGSL compiler (naga) rejects in them; draftattn's kernels use it and keep it.
 */
const ortDevice = new Proxy(device, {
  get(target, prop) {
    if (prop === "features") {
      return new Set([...target.features].filter((f) => f !== "subgroups"));
    }
    const value = Reflect.get(target, prop, target);
    return typeof value === "function" ? value.bind(target) : value;
  },
});

const U = GPUBufferUsage;
function gpuBuffer(data?: Float32Array): GPUBuffer {
  const b = device.createBuffer({ size: N * C * 4, usage: U.STORAGE | U.COPY_SRC | U.COPY_DST });
  if (data) device.queue.writeBuffer(b, 0, data as Float32Array<ArrayBuffer>);
  return b;
}
const asOrt = (b: GPUBuffer) =>
  ort.Tensor.fromGpuBuffer(b, { dataType: "float32", dims: [1, N, C] });

/** Seeded weights, scaled so that the logits are O(1). */
function weights(seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: C * C }, () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  });
}

interface Layer {
  w: { q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array };
  qkv: OrtSession;
  out: OrtSession;
}

const sessionOptions = {
  executionProviders: [{ name: "webgpu", device: ortDevice }],
  preferredOutputLocation: "gpu-buffer",
};
const layers: Layer[] = [];
for (let l = 0; l < LAYERS; l++) {
  const w = {
    q: weights(10 * l + 1, 0.3),
    k: weights(10 * l + 2, 0.3),
    v: weights(10 * l + 3, 0.4),
    o: weights(10 * l + 4, 0.1),
  };
  const dims = [1, N, C], wd = [C, C];
  const qkv = await ort.InferenceSession.create(
    onnxModel({
      inputs: { x: dims },
      outputs: { q: dims, k: dims, v: dims },
      initializers: {
        wq: { dims: wd, data: w.q },
        wk: { dims: wd, data: w.k },
        wv: { dims: wd, data: w.v },
      },
      nodes: [["MatMul", ["x", "wq"], "q"], ["MatMul", ["x", "wk"], "k"], [
        "MatMul",
        ["x", "wv"],
        "v",
      ]],
    }),
    sessionOptions,
  );
  const out = await ort.InferenceSession.create(
    onnxModel({
      inputs: { x: dims, a: dims },
      outputs: { y: dims },
      initializers: { wo: { dims: wd, data: w.o } },
      nodes: [["MatMul", ["a", "wo"], "p"], ["Add", ["x", "p"], "y"]],
    }),
    sessionOptions,
  );
  layers.push({ w, qkv, out });
}

// ------------------------------------------------------------------------------------------
// The steps
// ------------------------------------------------------------------------------------------

const schedule = createStepSchedule({ steps: STEPS, denseStepFraction: 0.25, denseLayers: 1 });
const dense = rt.attention({ tokens: N, heads: GEOM.heads, headDim: GEOM.headDim });
// One draft op per layer: an op holds one mask (and with maskEvery > 1 reuses it), so layers
// must not share one.
const drafts: DraftAttentionOp[] = layers.map(() =>
  rt.draftAttention({ ...GEOM, pool: POOL, sparsity: SPARSITY })
);

const x0 = new Float32Array(N * C);
{
  // A smooth "latent": each channel a low-frequency pattern over (frame, row, column).
  for (let t = 0; t < N; t++) {
    const f = Math.floor(t / (GEOM.height * GEOM.width));
    const r = Math.floor(t / GEOM.width) % GEOM.height, c = t % GEOM.width;
    for (let ch = 0; ch < C; ch++) {
      x0[t * C + ch] = Math.sin(0.7 * r + 0.3 * ch) + Math.cos(0.4 * c - 0.2 * ch + f);
    }
  }
}
let x = gpuBuffer(x0), y = gpuBuffer();
const [q, k, v, a] = [gpuBuffer(), gpuBuffer(), gpuBuffer(), gpuBuffer()];
/** What ran, for the reference: mode and (draft) mask of every (step, layer). */
const trace: { mode: "dense" | "sparse"; mask?: Uint8Array }[][] = [];
const t0 = performance.now();
for (let step = 0; step < STEPS; step++) {
  trace.push([]);
  for (let l = 0; l < LAYERS; l++) {
    const { qkv, out } = layers[l];
    // ORT writes q, k, v straight into draftattn's input buffers (pre-allocated outputs).
    await qkv.run({ x: asOrt(x) }, { q: asOrt(q), k: asOrt(k), v: asOrt(v) });
    const mode = schedule.mode({ step, layer: l });
    const op: AttentionOp = mode === "dense" ? dense : drafts[l];
    await op.run({ q, k, v, out: a, layer: l });
    trace[step].push({
      mode,
      mask: mode === "sparse" ? (await drafts[l].lastMask()).mask : undefined,
    });
    await out.run({ x: asOrt(x), a: asOrt(a) }, { y: asOrt(y) });
    [x, y] = [y, x];
  }
}
await device.queue.onSubmittedWorkDone();
const ms = performance.now() - t0;

// Read the result back once.
const read = device.createBuffer({ size: N * C * 4, usage: U.MAP_READ | U.COPY_DST });
const enc = device.createCommandEncoder();
enc.copyBufferToBuffer(x, 0, read, 0, N * C * 4);
device.queue.submit([enc.finish()]);
await read.mapAsync(GPUMapMode.READ);
const result = new Float32Array(read.getMappedRange().slice(0));
read.unmap();

// ------------------------------------------------------------------------------------------
// Float64 reference of the same steps
// ------------------------------------------------------------------------------------------

function matmul(xs: Float64Array, w: Float32Array): Float64Array {
  const out = new Float64Array(N * C);
  for (let t = 0; t < N; t++) {
    for (let i = 0; i < C; i++) {
      const xi = xs[t * C + i];
      for (let j = 0; j < C; j++) out[t * C + j] += xi * w[i * C + j];
    }
  }
  return out;
}

/** Window (block) of raster token `t`: frame, window row, window column. */
function windowOf(t: number): number {
  const f = Math.floor(t / (GEOM.height * GEOM.width));
  const r = Math.floor(t / GEOM.width) % GEOM.height, c = t % GEOM.width;
  const nh = Math.ceil(GEOM.height / POOL[0]), nw = Math.ceil(GEOM.width / POOL[1]);
  return (f * nh + Math.floor(r / POOL[0])) * nw + Math.floor(c / POOL[1]);
}

/** Softmax attention in BSHD `[1, N, heads, headDim]`, keys limited by the block mask. */
function attention(qs: Float64Array, ks: Float64Array, vs: Float64Array, mask?: Uint8Array) {
  const { heads: H, headDim: D } = GEOM;
  const g = GEOM.frames * Math.ceil(GEOM.height / POOL[0]) * Math.ceil(GEOM.width / POOL[1]);
  const out = new Float64Array(N * C);
  const s = new Float64Array(N);
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < N; i++) {
      let m = -Infinity;
      for (let j = 0; j < N; j++) {
        const kept = !mask || mask[(h * g + windowOf(i)) * g + windowOf(j)] === 1;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qs[i * C + h * D + d] * ks[j * C + h * D + d];
        s[j] = kept ? dot / Math.sqrt(D) : -Infinity;
        if (s[j] > m) m = s[j];
      }
      let z = 0;
      for (let j = 0; j < N; j++) z += s[j] = Math.exp(s[j] - m);
      for (let j = 0; j < N; j++) {
        const p = s[j] / z;
        if (p === 0) continue;
        for (let d = 0; d < D; d++) out[i * C + h * D + d] += p * vs[j * C + h * D + d];
      }
    }
  }
  return out;
}

/** The steps in float64: with the ops' masks, or (`allDense`) dense everywhere. */
function reference(allDense: boolean): Float64Array {
  let ref = Float64Array.from(x0);
  for (let step = 0; step < STEPS; step++) {
    for (let l = 0; l < LAYERS; l++) {
      const { w } = layers[l];
      const mask = allDense ? undefined : trace[step][l].mask;
      const att = attention(matmul(ref, w.q), matmul(ref, w.k), matmul(ref, w.v), mask);
      const p = matmul(att, w.o);
      ref = ref.map((xi, i) => xi + p[i]);
    }
  }
  return ref;
}
const ref = reference(false), denseRef = reference(true);
let maxDiff = 0, maxRef = 0, draftEffect = 0;
for (let i = 0; i < ref.length; i++) {
  maxDiff = Math.max(maxDiff, Math.abs(result[i] - ref[i]));
  maxRef = Math.max(maxRef, Math.abs(ref[i]));
  draftEffect = Math.max(draftEffect, Math.abs(denseRef[i] - ref[i]));
}
const modes = trace.map((s) => s.map((c) => (c.mode === "dense" ? "D" : "S")).join("")).join(" ");
const densities = trace.flat().filter((c) => c.mask).map((c) =>
  c.mask!.reduce((n, b) => n + b, 0) / c.mask!.length
);
console.log(
  `${STEPS} steps x ${LAYERS} layers on ${rt.describe().adapter}: ${ms.toFixed(0)} ms; ` +
    `modes per step (layer by layer, D dense, S draft): ${modes}`,
);
console.log(
  `draft masks kept ${densities.map((d) => d.toFixed(2)).join(", ")} of the blocks; ` +
    `max |diff| vs float64 reference ${maxDiff.toExponential(2)} (max |x| ${maxRef.toFixed(2)}; ` +
    `all-dense steps would differ by ${draftEffect.toExponential(2)})`,
);
// The check has teeth only where the draft steps changed the result far beyond f32 rounding.
const ok = maxDiff <= 1e-4 * Math.max(1, maxRef) && densities.every((d) => d < 1) &&
  (densities.length === 0 || draftEffect > 100 * maxDiff);
for (const l of layers) {
  await l.qkv.release();
  await l.out.release();
}
for (const b of [x, y, q, k, v, a, read]) b.destroy();
rt.dispose();
if (!ok) {
  console.error("example: the GPU result differs from the float64 reference");
  Deno.exit(1);
}
console.log("ok");
