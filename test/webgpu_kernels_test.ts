/**
 * Kernel stories of the WebGPU backend on the real adapter (llvmpipe here): upload, dispatch,
 * read back, compare with a small float64 (or exact f32) computation written out below.
 * - pool: window means through `order`, ragged windows, exact against an f32 emulation.
 * - draft map: softmax(Qd Kd^T * scale) against float64.
 * - selection: radix select + block lists against `selectMask`/`maskToSchedule` fed the SAME P,
 *   exactly (ties, multi-chunk rows, keep = 1 and keep = g^2).
 * - flash attention: dense sweep (tokens 1..129 x headDim 4..256 x layouts x dtypes) against
 *   naive float64, on the adapter's limits and on WebGPU's default limits (16 KiB variants).
 * - a full draft run against a float64 block-sparse attention over the mask it reports.
 *
 * No adapter: a failure under CI=true, and elsewhere unless DRAFTATTN_SKIP_GPU=1 (then the
 * tests are listed as ignored with the reason). Never a silent pass.
 */
import assert from "node:assert/strict";
import { buildPlan, maskToSchedule, selectMask } from "../src/plan.ts";
import type { DenseSpec, DraftSpec, DType, Geometry, Layout, Plan } from "../src/types.ts";
import { keepCount, maskConfig } from "../src/validate.ts";
import { createWebGpuBackend } from "../src/webgpu/backend.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { packParams } from "../src/webgpu/kernel.ts";
import {
  HIST_CHUNK,
  HIST_PARAMS,
  histKernel,
  LISTS_PARAMS,
  listsKernel,
  MAP_PARAMS,
  MAP_ROWS,
  mapKernel,
  PICK_PARAMS,
  pickKernel,
  POOL_PARAMS,
  POOL_WG,
  poolKernel,
} from "../src/webgpu/kernels.ts";
import { WebGpuOp } from "../src/webgpu/op.ts";
import { gpuSuite, readBuffer } from "./_gpu.ts";
import {
  flashConfig,
  pickFlashVariant,
  subRows,
  type TiledVariant,
} from "../src/webgpu/variants.ts";
import { strides } from "../src/webgpu/pieces.ts";

// ---------------------------------------------------------------------------------------------
// GPU availability and devices
// ---------------------------------------------------------------------------------------------

const adapter = await navigator.gpu?.requestAdapter();

/** The device the runtime would request: the adapter's limits. */
async function fullDevice(): Promise<GPUDevice> {
  const a = adapter!;
  return await a.requestDevice({
    requiredLimits: {
      maxComputeWorkgroupStorageSize: a.limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: a.limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
      maxBufferSize: a.limits.maxBufferSize,
    },
  });
}

/**
 * A device with `shader-f16` (where the adapter lists it) and `subgroups` (requestable in Deno
 * although unlisted; dropped if refused), and the adapter's compute limits: subgroup variants
 * size workgroups from the subgroup size (32 on NVIDIA gives 512 threads for some test tiles,
 * above WebGPU's default 256). The caller destroys it.
 */
async function featureDevice(): Promise<GPUDevice> {
  const a = adapter!;
  const features = (["shader-f16", "subgroups"] as GPUFeatureName[]).filter((f) =>
    a.features.has(f) || f === "subgroups"
  );
  const requiredLimits = {
    maxComputeInvocationsPerWorkgroup: a.limits.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: a.limits.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupStorageSize: a.limits.maxComputeWorkgroupStorageSize,
  };
  try {
    return await a.requestDevice({ requiredFeatures: features, requiredLimits });
  } catch {
    return await a.requestDevice({
      requiredFeatures: features.filter((f) => a.features.has(f)),
      requiredLimits,
    });
  }
}

let devices: { full: GPUDevice; small: GPUDevice } | undefined;
async function device(kind: "full" | "small" = "full"): Promise<GPUDevice> {
  devices ??= { full: await fullDevice(), small: await adapter!.requestDevice() };
  return devices[kind];
}

const gpuTest = gpuSuite("webgpu kernels", adapter);

// ---------------------------------------------------------------------------------------------
// Helpers: deterministic data, buffers, readback
// ---------------------------------------------------------------------------------------------

/** Small LCG: deterministic inputs in [-1, 1). */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    this.#s = (Math.imul(this.#s, 1664525) + 1013904223) >>> 0;
    return this.#s / 2 ** 31 - 1;
  }
}

function tensor(dtype: DType, n: number, rng: Rng): Float32Array | Float16Array {
  const a = dtype === "f16" ? new Float16Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.next();
  return a;
}

const U = () => GPUBufferUsage;

function upload(dev: GPUDevice, data: ArrayBufferView, extra = 0): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 4) * 4);
  const b = dev.createBuffer({
    size,
    usage: U().STORAGE | U().COPY_SRC | U().COPY_DST | extra,
    mappedAtCreation: true,
  });
  new Uint8Array(b.getMappedRange()).set(
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  );
  b.unmap();
  return b;
}

function uniform(dev: GPUDevice, bytes: ArrayBuffer): GPUBuffer {
  return upload(dev, new Uint8Array(bytes), GPUBufferUsage.UNIFORM);
}

function storage(dev: GPUDevice, bytes: number): GPUBuffer {
  return dev.createBuffer({
    size: Math.max(16, Math.ceil(bytes / 4) * 4),
    usage: U().STORAGE | U().COPY_SRC | U().COPY_DST,
  });
}

async function readBack(dev: GPUDevice, src: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
  return (await readBuffer(dev, src)).slice(0, bytes).buffer;
}

/** Runs `record` in one compute pass under a validation scope; fails on any error. */
async function dispatch(dev: GPUDevice, record: (pass: GPUComputePassEncoder) => void) {
  dev.pushErrorScope("validation");
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  record(pass);
  pass.end();
  dev.queue.submit([enc.finish()]);
  const err = await dev.popErrorScope();
  assert.equal(err, null, err?.message);
}

function geometry(g: Partial<Geometry> & Pick<Geometry, "frames" | "height" | "width">): Geometry {
  return { textTokens: 0, textPosition: "after", poolH: 8, poolW: 16, ...g };
}

/** A dense spec: batch 1 and 2 heads unless given, scale 1 / sqrt(headDim). */
function denseSpec(
  s: Pick<DenseSpec, "tokens" | "headDim" | "layout" | "dtype"> & Partial<DenseSpec>,
): DenseSpec {
  return { batch: 1, heads: 2, scale: 1 / Math.sqrt(s.headDim), ...s };
}

/** A percentile draft spec over `geom` (its plan `plan`), sparsity 0.5 unless given. */
function draftSpec(
  geom: Geometry,
  plan: Plan,
  s: Pick<DraftSpec, "headDim" | "layout" | "dtype"> & Partial<DraftSpec>,
): DraftSpec {
  const sparsity = s.sparsity ?? 0.5;
  const spec = {
    ...denseSpec({ tokens: plan.tokens, ...s }),
    ...geom,
    sparsity,
    policy: "percentile" as const,
    keep: keepCount(plan.g, sparsity),
  };
  return { ...spec, mask: maskConfig(spec, plan.g) };
}

/** Index of element (b, t, h, 0) in a tensor of `spec`'s layout. */
function at(spec: DenseSpec, b: number, t: number, h: number): number {
  const s = strides(spec);
  return b * s.sB + t * s.sT + h * s.sH;
}

// ---------------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------------

/** Exact f32 emulation: sequential sum in window order, then sum * f32(1 / len). */
function poolF32(x: ArrayLike<number>, spec: DenseSpec, plan: Plan): Float32Array {
  const { batch: B, heads: H, headDim: D } = spec;
  const out = new Float32Array(B * H * plan.g * D);
  const f = Math.fround;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < plan.g; i++) {
        const inv = f(1 / plan.tileLen[i]);
        for (let d = 0; d < D; d++) {
          let sum = 0;
          for (let r = 0; r < plan.tileLen[i]; r++) {
            sum = f(sum + x[at(spec, b, plan.order[plan.tileStart[i] + r], h) + d]);
          }
          out[((b * H + h) * plan.g + i) * D + d] = f(sum * inv);
        }
      }
    }
  }
  return out;
}

for (
  const [layout, dtype, geom] of [
    ["BSHD", "f32", geometry({ frames: 2, height: 5, width: 7, poolH: 2, poolW: 3 })],
    ["BHSD", "f16", geometry({ frames: 3, height: 13, width: 21, textTokens: 5 })],
    [
      "BSHD",
      "f16",
      geometry({
        frames: 1,
        height: 9,
        width: 10,
        poolH: 4,
        poolW: 4,
        textTokens: 3,
        textPosition: "before",
      }),
    ],
  ] as const
) {
  gpuTest(
    `pool ${layout} ${dtype} ${geom.frames}x${geom.height}x${geom.width} pool ${geom.poolH}x${geom.poolW} text ${geom.textTokens} (exact)`,
    async () => {
      const dev = await device();
      const ctx = new GpuContext(dev);
      const plan = buildPlan(geom);
      const spec: DenseSpec = {
        batch: 2,
        tokens: plan.tokens,
        heads: 3,
        headDim: 12,
        layout,
        dtype,
        scale: 1,
      };
      const x = tensor(dtype, 2 * plan.tokens * 3 * 12, new Rng(7));
      const s = strides(spec);
      const nbh = 6, D4 = 3;
      const tiles = new Uint32Array(2 * plan.tiles);
      plan.tileStart.forEach((v, t) => (tiles[2 * t] = v));
      plan.tileLen.forEach((v, t) => (tiles[2 * t + 1] = v));
      const pooled = storage(dev, nbh * plan.g * 12 * 4);
      const kernel = poolKernel(ctx, 12, dtype);
      const group = kernel.bind({
        params: uniform(
          dev,
          packParams(POOL_PARAMS, {
            nbh,
            heads_per_row: layout === "BSHD" ? 3 : nbh,
            g: plan.g,
            s_b: s.sB / 4,
            s_t: s.sT / 4,
            s_h: s.sH / 4,
            base: 0,
            pair0: 0,
          }),
        ),
        x: upload(dev, x),
        order: upload(dev, plan.order),
        tiles: upload(dev, tiles),
        inv_len: upload(dev, Float32Array.from(plan.tileLen.subarray(0, plan.g), (l) => 1 / l)),
        pooled,
      });
      await dispatch(
        dev,
        (pass) => kernel.dispatch(pass, group, Math.ceil((nbh * plan.g * D4) / POOL_WG)),
      );
      const got = new Float32Array(await readBack(dev, pooled, nbh * plan.g * 12 * 4));
      assert.deepEqual(got, poolF32(x, spec, plan));
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Draft map
// ---------------------------------------------------------------------------------------------

for (const [g, D] of [[1, 4], [7, 32], [40, 64], [130, 128]] as const) {
  gpuTest(`draft map g=${g} D=${D} against float64`, async () => {
    const dev = await device();
    const ctx = new GpuContext(dev);
    const nbh = 2, scale = 1 / Math.sqrt(D);
    const rng = new Rng(g * 1000 + D);
    const qd = Float32Array.from({ length: nbh * g * D }, () => rng.next());
    const kd = Float32Array.from({ length: nbh * g * D }, () => rng.next());
    const p = storage(dev, nbh * g * g * 4);
    const kernel = mapKernel(ctx, D);
    const rowBlocks = Math.ceil(g / MAP_ROWS);
    const group = kernel.bind({
      params: uniform(dev, packParams(MAP_PARAMS, { nbh, g, row_blocks: rowBlocks, scale })),
      qd: upload(dev, qd),
      kd: upload(dev, kd),
      p,
    });
    await dispatch(dev, (pass) => kernel.dispatch(pass, group, nbh * rowBlocks));
    const got = new Float32Array(await readBack(dev, p, nbh * g * g * 4));
    let worst = 0;
    for (let x = 0; x < nbh; x++) {
      for (let i = 0; i < g; i++) {
        const s = new Float64Array(g);
        for (let j = 0; j < g; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qd[(x * g + i) * D + d] * kd[(x * g + j) * D + d];
          s[j] = dot * scale;
        }
        const m = Math.max(...s);
        const e = s.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j < g; j++) {
          const v = got[(x * g + i) * g + j];
          assert.ok(Number.isFinite(v), `P[${x}][${i}][${j}] = ${v}`);
          worst = Math.max(worst, Math.abs(v - e[j] / z) / (e[j] / z));
        }
      }
    }
    assert.ok(worst < 2e-5, `max relative error ${worst}`);
  });
}

// ---------------------------------------------------------------------------------------------
// Selection: radix select + block lists, exact against src/plan.ts on the same P
// ---------------------------------------------------------------------------------------------

/** Runs select_histogram/select_pick x4 and select_lists on `p` ([nbh][g][g]). */
async function gpuSelect(
  dev: GPUDevice,
  p: Float32Array,
  nbh: number,
  plan: Plan,
  keep: number,
): Promise<{ threshold: Float32Array; count: Uint32Array; list: Uint32Array }> {
  const ctx = new GpuContext(dev);
  const { g, tiles } = plan;
  const pBuf = upload(dev, p);
  const hist = storage(dev, nbh * 256 * 4);
  const state = storage(dev, nbh * 8);
  const counts = storage(dev, nbh * tiles * 4);
  const lists = storage(dev, nbh * tiles * tiles * 4);
  const hk = histKernel(ctx), pk = pickKernel(ctx), lk = listsKernel(ctx);
  const chunks = Math.ceil((g * g) / HIST_CHUNK);
  await dispatch(dev, (pass) => {
    for (const shift of [24, 16, 8, 0]) {
      const hp = uniform(dev, packParams(HIST_PARAMS, { nbh, n: g * g, chunks, shift }));
      hk.dispatch(pass, hk.bind({ params: hp, p: pBuf, state, hist }), nbh * chunks);
      const pp = uniform(dev, packParams(PICK_PARAMS, { nbh, shift, keep }));
      pk.dispatch(pass, pk.bind({ params: pp, hist, state }), nbh);
    }
    const lp = uniform(dev, packParams(LISTS_PARAMS, { nbh, g, tiles, pair0: 0 }));
    lk.dispatch(pass, lk.bind({ params: lp, p: pBuf, state, counts, lists }), nbh * g);
  });
  const st = new Uint32Array(await readBack(dev, state, nbh * 8));
  const threshold = new Float32Array(nbh);
  for (let x = 0; x < nbh; x++) {
    threshold[x] = new Float32Array(new Uint32Array([st[2 * x]]).buffer)[0];
  }
  return {
    threshold,
    count: new Uint32Array(await readBack(dev, counts, nbh * tiles * 4)),
    list: new Uint32Array(await readBack(dev, lists, nbh * tiles * tiles * 4)),
  };
}

/** A draft-map-like P: rows sum to 1; `levels` > 0 quantises values so that ties abound. */
function randomP(g: number, nbh: number, rng: Rng, levels = 0): Float32Array {
  const p = new Float32Array(nbh * g * g);
  for (let r = 0; r < nbh * g; r++) {
    let z = 0;
    for (let j = 0; j < g; j++) {
      let e = Math.exp(4 * rng.next());
      if (levels) e = Math.ceil((e / 60) * levels) / levels;
      p[r * g + j] = e;
      z += e;
    }
    for (let j = 0; j < g; j++) p[r * g + j] = p[r * g + j] / z;
  }
  return p;
}

const SELECT_CASES: readonly { name: string; geom: Geometry; sparsity: number; levels: number }[] =
  [
    { name: "g=1", geom: geometry({ frames: 1, height: 8, width: 16 }), sparsity: 0.9, levels: 0 },
    {
      name: "g=12 text 130 after, ties",
      geom: geometry({ frames: 3, height: 13, width: 21, textTokens: 130 }),
      sparsity: 0.5,
      levels: 3,
    },
    {
      name: "g=300 text 5 before, 0.97",
      geom: geometry({
        frames: 3,
        height: 40,
        width: 40,
        poolH: 4,
        poolW: 4,
        textTokens: 5,
        textPosition: "before",
      }),
      sparsity: 0.97,
      levels: 0,
    },
    {
      name: "g=300 ties, 0.9",
      geom: geometry({ frames: 3, height: 40, width: 40, poolH: 4, poolW: 4 }),
      sparsity: 0.9,
      levels: 7,
    },
    {
      name: "g=20 sparsity 0 (keep all)",
      geom: geometry({ frames: 5, height: 4, width: 4, poolH: 2, poolW: 2 }),
      sparsity: 0,
      levels: 0,
    },
    {
      name: "g=20 keep 1",
      geom: geometry({ frames: 5, height: 4, width: 4, poolH: 2, poolW: 2 }),
      sparsity: 0.999,
      levels: 0,
    },
  ];

for (const c of SELECT_CASES) {
  gpuTest(
    `selection ${c.name}: threshold, mask and lists equal selectMask/maskToSchedule`,
    async () => {
      const dev = await device();
      const plan = buildPlan(c.geom);
      const { g, tiles } = plan;
      const nbh = 3;
      const keep = keepCount(g, c.sparsity);
      const p = randomP(g, nbh, new Rng(g + c.levels), c.levels);
      const got = await gpuSelect(dev, p, nbh, plan, keep);
      for (let x = 0; x < nbh; x++) {
        const px = p.subarray(x * g * g, (x + 1) * g * g);
        const sorted = Float32Array.from(px).sort().reverse();
        assert.equal(got.threshold[x], sorted[keep - 1], `threshold of pair ${x}`);
        const want = maskToSchedule(selectMask(px, g, keep), plan);
        const count = got.count.subarray(x * tiles, (x + 1) * tiles);
        // Text rows are the op's constant rows (written by the host), not the kernel's.
        assert.deepEqual(Array.from(count.subarray(0, g)), Array.from(want.count.subarray(0, g)));
        for (let i = 0; i < g; i++) {
          const row = got.list.subarray(
            (x * tiles + i) * tiles,
            (x * tiles + i) * tiles + count[i],
          );
          const wantRow = want.list.subarray(i * tiles, i * tiles + want.count[i]);
          assert.deepEqual(Array.from(row), Array.from(wantRow), `pair ${x} row ${i}`);
        }
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Flash attention, dense: sweep against naive float64
// ---------------------------------------------------------------------------------------------

function attention64(
  spec: DenseSpec,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  keys: (b: number, h: number, i: number) => ArrayLike<number> | undefined = () => undefined,
): Float64Array {
  const { batch: B, tokens: N, heads: H, headDim: D } = spec;
  const out = new Float64Array(B * N * H * D);
  const all = Int32Array.from({ length: N }, (_, j) => j);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < N; i++) {
        const js = keys(b, h, i) ?? all;
        const s = new Float64Array(js.length);
        let m = -Infinity;
        for (let x = 0; x < js.length; x++) {
          let dot = 0;
          for (let d = 0; d < D; d++) {
            dot += q[at(spec, b, i, h) + d] * k[at(spec, b, js[x], h) + d];
          }
          s[x] = dot * spec.scale;
          m = Math.max(m, s[x]);
        }
        let z = 0;
        for (let x = 0; x < js.length; x++) z += s[x] = Math.exp(s[x] - m);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let x = 0; x < js.length; x++) acc += s[x] * v[at(spec, b, js[x], h) + d];
          out[at(spec, b, i, h) + d] = acc / z;
        }
      }
    }
  }
  return out;
}

/** f32: a few ulps of the O(1) outputs; f16: the output rounding (1/2 ulp at 1) and a bit. */
const TOL: Record<DType, number> = { f32: 3e-6, f16: 6e-4 };

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) {
  let worst = 0, where = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= worst)) {
      worst = Number.isNaN(e) ? Infinity : e;
      where = i;
    }
  }
  assert.ok(
    worst <= tol,
    `${what}: max error ${worst} at ${where} (got ${got[where]}, want ${
      want[where]
    }), tolerance ${tol}`,
  );
}

const COMBOS: readonly (readonly [Layout, DType])[] = [
  ["BSHD", "f32"],
  ["BHSD", "f16"],
  ["BHSD", "f32"],
  ["BSHD", "f16"],
];

for (const kind of ["full", "small"] as const) {
  gpuTest(
    `dense flash sweep (${kind === "full" ? "adapter limits" : "default 16 KiB limits"})`,
    async () => {
      const dev = await device(kind);
      const backend = createWebGpuBackend({ device: dev, reason: "test", features: [] });
      // Adapter limits: every (layout, dtype) combination meets every head dim and token count.
      // Default limits: one dtype per head dim (each is a pipeline compile, ~1 s on llvmpipe).
      const tokenList = kind === "full" ? [1, 63, 65, 97, 129] : [1, 65, 129];
      for (const [x, D] of [4, 32, 64, 128, 256].entries()) {
        for (const [y, N] of tokenList.entries()) {
          const combos = kind === "full"
            ? COMBOS
            : [[y % 2 ? "BHSD" : "BSHD", x % 2 ? "f16" : "f32"] as const];
          for (const [layout, dtype] of combos) {
            const spec = denseSpec({ batch: 2, tokens: N, headDim: D, layout, dtype });
            const rng = new Rng(N * 7 + D);
            const size = 2 * N * 2 * D;
            const [q, k, v] = [
              tensor(dtype, size, rng),
              tensor(dtype, size, rng),
              tensor(dtype, size, rng),
            ];
            const op = backend.dense(spec) as WebGpuOp;
            if (kind === "small") {
              assert.ok(op.config.smemBytes <= 16384, `variant needs ${op.config.smemBytes} bytes`);
            }
            const out = await op.run(q, k, v);
            assert.ok(out instanceof (dtype === "f16" ? Float16Array : Float32Array));
            assertClose(
              out,
              attention64(spec, q, k, v),
              TOL[dtype],
              `N=${N} D=${D} ${layout} ${dtype} BR=${op.config.br}`,
            );
            op.dispose();
          }
        }
      }
      backend.dispose();
    },
  );
}

// Head dims off the variants' DP: zero-padded dims and a partial last Q/K chunk (36 = 32 + 4,
// 100 = 3 x 32 + 4).
gpuTest("dense flash with head dims 12, 36, 100", async () => {
  const backend = createWebGpuBackend({ device: await device(), reason: "test", features: [] });
  for (const [x, D] of [12, 36, 100].entries()) {
    const [layout, dtype] = COMBOS[x];
    const spec = denseSpec({ tokens: 97, headDim: D, layout, dtype });
    const rng = new Rng(D);
    const size = 97 * 2 * D;
    const [q, k, v] = [
      tensor(dtype, size, rng),
      tensor(dtype, size, rng),
      tensor(dtype, size, rng),
    ];
    const op = backend.dense(spec);
    assertClose(
      await op.run(q, k, v),
      attention64(spec, q, k, v),
      TOL[dtype],
      `D=${D} ${layout} ${dtype}`,
    );
    op.dispose();
  }
  backend.dispose();
});

// The options of the large tiled variants (K of the next chunk and V loaded a phase ahead,
// loops unrolled by 8) change when loads happen, not the arithmetic: bitwise the same output as
// the plain variant of the same tile, dense and block-sparse (runs merged across tiles, partial
// chunks, the lookahead crossing runs). Small tiles so that llvmpipe's 32 KiB holds them.
gpuTest("tiled kernel: loads ahead and unroll 8 match the plain variant bitwise", async () => {
  const ctx = new GpuContext(await device());
  const geom = geometry({ frames: 2, height: 13, width: 21, textTokens: 5, textPosition: "after" });
  const plan = buildPlan(geom);
  for (
    const [x, [D, rg, cg, tn, td4]] of [[128, 4, 32, 1, 1], [64, 8, 16, 2, 1]].entries()
  ) {
    const plain = { kernel: "tiled", tm4: 1, rg, cg, tn, td4 } as const;
    const fast = { ...plain, prefetchK: true, earlyV: true, ud: 8, uj: 8 };
    const [layout, dtype] = COMBOS[x];
    for (const N of [1, 65, 129]) {
      const spec = denseSpec({ tokens: N, headDim: D, layout, dtype });
      const rng = new Rng(N + D);
      const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, N * 2 * D, rng));
      const a = new WebGpuOp(ctx, spec, undefined, () => {}, plain);
      const b = new WebGpuOp(ctx, spec, undefined, () => {}, fast);
      const outA = await a.run(q, k, v), outB = await b.run(q, k, v);
      assertClose(outA, attention64(spec, q, k, v), TOL[dtype], `dense N=${N} D=${D}`);
      assert.deepEqual(outB, outA, `dense N=${N} D=${D}: options changed the output`);
      a.dispose();
      b.dispose();
    }
    const spec = draftSpec(geom, plan, { headDim: D, layout, dtype });
    const rng = new Rng(7 + D);
    const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, plan.tokens * 2 * D, rng));
    const a = new WebGpuOp(ctx, spec, plan, () => {}, plain);
    const b = new WebGpuOp(ctx, spec, plan, () => {}, fast);
    const outA = await a.run(q, k, v), outB = await b.run(q, k, v);
    assert.deepEqual((await b.lastMask()).mask, (await a.lastMask()).mask);
    assert.deepEqual(outB, outA, `draft D=${D}: options changed the output`);
    a.dispose();
    b.dispose();
  }
});

// The chunked kernel walks its keys with the block-list iterator of the tiled kernels
// (next_chunk in wgsl/flash_io.wgsl): dense against float64, block-sparse against the tiled
// kernel on the same block lists (runs merged across tiles, partial chunks, text rows), with
// several head-dim chunks (ND > 1) and V sub-chunks per key chunk.
gpuTest("chunked kernel: the shared block-list iterator, dense and block-sparse", async () => {
  const ctx = new GpuContext(await device());
  const geom = geometry({ frames: 2, height: 13, width: 21, textTokens: 5, textPosition: "after" });
  const plan = buildPlan(geom);
  for (
    const [x, [D, rg, cg, td4, dk, vk]] of [[128, 8, 8, 4, 16, 16], [64, 4, 8, 2, 32, 8]].entries()
  ) {
    const chunked = { kernel: "chunked", rg, cg, td4, dk, vk } as const;
    const tiled = { kernel: "tiled", tm4: 1, rg: 4, cg: 16, tn: 2, td4: D / 64 } as const;
    const [layout, dtype] = COMBOS[x];
    for (const N of [1, 65, 129]) {
      const spec = denseSpec({ tokens: N, headDim: D, layout, dtype });
      const rng = new Rng(N + D);
      const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, N * 2 * D, rng));
      const op = new WebGpuOp(ctx, spec, undefined, () => {}, chunked);
      assert.equal(op.config.file, "flash_chunked");
      assertClose(await op.run(q, k, v), attention64(spec, q, k, v), TOL[dtype], `N=${N} D=${D}`);
      op.dispose();
    }
    const spec = draftSpec(geom, plan, { headDim: D, layout, dtype });
    const rng = new Rng(11 + D);
    const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, plan.tokens * 2 * D, rng));
    const a = new WebGpuOp(ctx, spec, plan, () => {}, tiled);
    const b = new WebGpuOp(ctx, spec, plan, () => {}, chunked);
    const outA = await a.run(q, k, v), outB = await b.run(q, k, v);
    const { mask, density } = await b.lastMask();
    assert.deepEqual(mask, (await a.lastMask()).mask);
    assert.ok(density > 0 && density < 1, `draft D=${D}: density ${density}`);
    assertClose(outB, outA, TOL[dtype], `draft D=${D}: chunked vs tiled`);
    a.dispose();
    b.dispose();
  }
});

// f16 workgroup memory (K/V, Q^T, f16 S products) and subgroup row groups: against float64 and
// close to the plain variant of the same tile, dense and block-sparse, on a device with
// shader-f16 and subgroups. Subgroup variants need cg = the adapter's subgroup size (8 on
// llvmpipe, 32 on NVIDIA); off that size they run as the plain variant, which is checked too.
gpuTest("tiled kernel: f16 workgroup memory and subgroup variants", async () => {
  const dev = await featureDevice();
  const ctx = new GpuContext(dev);
  const sg = ctx.subgroupSize || 8;
  const geom = geometry({ frames: 2, height: 13, width: 21, textTokens: 5, textPosition: "after" });
  const plan = buildPlan(geom);
  // Subgroup rows at head dim 64, sized so that the variant and its plain twin fit 32 KiB with
  // subgroups of 8 (llvmpipe) and 48 KiB with subgroups of 32 (NVIDIA): DP stays at 64 / 128.
  const sg64 = (o: Partial<TiledVariant>): TiledVariant => ({
    kernel: "tiled",
    tm4: 1,
    rg: 4,
    cg: sg,
    tn: 32 / sg,
    td4: Math.ceil(16 / sg),
    subgroupRows: true,
    ...o,
  });
  const cases: [number, TiledVariant, string][] = [
    [128, { kernel: "tiled", tm4: 1, rg: 4, cg: 32, tn: 1, td4: 1, f16KV: true }, "f16KV"],
    [128, { kernel: "tiled", tm4: 1, rg: 4, cg: 32, tn: 1, td4: 1, f16S: true, ud: 8 }, "f16S"],
    [
      64,
      { kernel: "tiled", tm4: 1, rg: 8, cg: 16, tn: 2, td4: 1, f16KV: true, f16QT: true },
      "f16KV f16QT",
    ],
    [64, sg64({}), "subgroupRows"],
    [64, sg64({ f16KV: true }), "subgroupRows f16KV"],
    [
      32,
      { kernel: "tiled", tm4: 1, rg: 16, cg: sg, tn: 32 / sg, td4: 1, subgroupRows: true, uj: 8 },
      "subgroupRows d32",
    ],
    [64, sg64({ tm4: 3, f16QT: true }), "subgroupRows f16QT tm3"],
    [64, sg64({ f16KV: true, swizzleK: true }), "subgroupRows f16KV swizzleK"],
    [64, { kernel: "tiled", tm4: 1, rg: 8, cg: 16, tn: 2, td4: 1, swizzleK: true }, "swizzleK"],
    [
      64,
      { kernel: "tiled", tm4: 2, rg: 4, cg: 16, tn: 2, td4: 1, f16KV: true, packedQT: true },
      "packedQT",
    ],
    [
      64,
      sg64({ tm4: 2, vOverK: true, f16KV: true, packedQT: true, swizzleK: true }),
      "subgroupRows vOverK packedQT",
    ],
    [
      64,
      sg64({
        tm4: 2,
        vOverK: true,
        f16KV: true,
        f16QT: true,
        swizzleK: true,
        prefetchK: true,
        earlyV: true,
      }),
      "subgroupRows vOverK f16KV f16QT swizzleK",
    ],
    [64, sg64({ vOverK: true }), "subgroupRows vOverK"],
    // Key halves: DP = 2 * cg * td4 = 64 on both devices.
    [
      64,
      sg64({
        tm4: 2,
        td4: 32 / sg,
        keyHalves: true,
        vOverK: true,
        f16KV: true,
        packedQT: true,
        swizzleK: true,
      }),
      "subgroupRows keyHalves",
    ],
    [64, sg64({ td4: 32 / sg, keyHalves: true }), "subgroupRows keyHalves f32"],
    // Sub-rows: two (four) row groups per subgroup, each lane 2+ keys of the 32-key chunk.
    [64, sg64({ cg: sg / 2, tn: 64 / sg, td4: 32 / sg }), "subgroupRows sub-rows"],
    [
      64,
      sg64({
        cg: sg / 2,
        tn: 64 / sg,
        td4: 32 / sg,
        vOverK: true,
        f16KV: true,
        f16QT: true,
        swizzleK: true,
      }),
      "subgroupRows sub-rows vOverK f16KV f16QT swizzleK",
    ],
    [
      64,
      sg64({
        tm4: 2,
        cg: sg / 2,
        tn: 64 / sg,
        td4: 32 / sg,
        vOverK: true,
        f16KV: true,
        packedQT: true,
      }),
      "subgroupRows sub-rows packedQT",
    ],
    [64, sg64({ rg: 8, cg: sg / 4, tn: 2, td4: 64 / sg }), "subgroupRows quarter rows"],
    // The 16 KiB f32 tile at head dim 128 (sub-rows, one key per lane, V over K).
    [
      128,
      sg64({
        cg: sg / 2,
        tn: 1,
        td4: 64 / sg,
        vOverK: true,
        swizzleK: true,
        prefetchK: true,
        earlyV: true,
        ud: 8,
      }),
      "subgroupRows sub-rows d128 tn1 vOverK swizzleK",
    ],
    // P V in f16 (f16 sums over runs of uj keys).
    [
      64,
      sg64({
        tm4: 2,
        vOverK: true,
        f16KV: true,
        packedQT: true,
        swizzleK: true,
        f16PV: true,
        uj: 8,
      }),
      "subgroupRows f16PV",
    ],
    [
      64,
      sg64({ cg: sg / 2, tn: 64 / sg, td4: 32 / sg, f16KV: true, f16PV: true }),
      "subgroupRows sub-rows f16PV",
    ],
  ];
  /** Whether the device can run `v` at head dim D and this dtype (f32 tiles are twice as big). */
  const fits = (v: TiledVariant, D: number, dtype: "f16" | "f32") => {
    const c = flashConfig(v, D, dtype === "f16" && dev.features.has("shader-f16"), sg);
    return c.smemBytes <= dev.limits.maxComputeWorkgroupStorageSize &&
      c.threads <= dev.limits.maxComputeInvocationsPerWorkgroup;
  };
  for (const [D, variant, name] of cases) {
    let ran = 0;
    for (const dtype of ["f16", "f32"] as const) {
      const plain = {
        ...variant,
        f16KV: false,
        f16QT: false,
        f16S: false,
        subgroupRows: false,
        swizzleK: false,
        packedQT: false,
        keyHalves: false,
        f16PV: false,
      };
      // A variant the device cannot hold is refused at op creation (TOO_LARGE "variant");
      // run only the combinations that fit, and at least one per case.
      if (!fits(variant, D, dtype) || !fits(plain, D, dtype)) continue;
      ran++;
      for (const N of [1, 65, 129]) {
        const spec = denseSpec({ tokens: N, headDim: D, layout: "BHSD", dtype });
        const rng = new Rng(N + D + 3);
        const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, N * 2 * D, rng));
        const op = new WebGpuOp(ctx, spec, undefined, () => {}, variant);
        const ref = new WebGpuOp(ctx, spec, undefined, () => {}, plain);
        const c = op.config as TiledVariant;
        if (dtype === "f16" && dev.features.has("shader-f16")) {
          assert.equal(!!c.f16KV, !!(variant.f16KV || variant.f16S), `${name}: f16KV in use`);
          assert.equal(!!c.f16S, !!variant.f16S, `${name}: f16S in use`);
        } else {assert.ok(
            !c.f16KV && !c.f16QT && !c.f16S,
            `${name}: no f16 workgroup memory for f32`,
          );}
        const subgroup = subRows(ctx.subgroupSize, variant.cg) &&
          (variant.rg * variant.cg) % ctx.subgroupSize === 0;
        assert.equal(!!c.subgroupRows, !!variant.subgroupRows && subgroup, `${name}: subgroupRows`);
        assert.equal(!!c.swizzleK, !!variant.swizzleK, `${name}: swizzleK`);
        if (dtype === "f16" && dev.features.has("shader-f16")) {
          assert.equal(!!c.packedQT, !!variant.packedQT, `${name}: packedQT`);
        } else assert.ok(!c.packedQT, `${name}: no packedQT for f32`);
        assert.equal(!!c.vOverK, !!variant.vOverK && !!c.subgroupRows, `${name}: vOverK`);
        assert.equal(!!c.keyHalves, !!variant.keyHalves && !!c.subgroupRows, `${name}: keyHalves`);
        assert.equal(!!c.f16PV, !!variant.f16PV && !!c.subgroupRows && !!c.f16KV, `${name}: f16PV`);
        const out = await op.run(q, k, v), base = await ref.run(q, k, v);
        const want = attention64(spec, q, k, v);
        assertClose(out, want, TOL[dtype], `${name} ${dtype} dense N=${N}`);
        assertClose(out, base, TOL[dtype], `${name} ${dtype} dense N=${N} vs plain`);
        op.dispose();
        ref.dispose();
      }
      const spec = draftSpec(geom, plan, { headDim: D, layout: "BSHD", dtype });
      const rng = new Rng(9 + D);
      const [q, k, v] = [0, 1, 2].map(() => tensor(dtype, plan.tokens * 2 * D, rng));
      const op = new WebGpuOp(ctx, spec, plan, () => {}, variant);
      const ref = new WebGpuOp(ctx, spec, plan, () => {}, plain);
      const out = await op.run(q, k, v), base = await ref.run(q, k, v);
      assert.deepEqual((await op.lastMask()).mask, (await ref.lastMask()).mask);
      assertClose(out, base, TOL[dtype], `${name} ${dtype} draft vs plain`);
      op.dispose();
      ref.dispose();
    }
    assert.ok(ran > 0, `${name}: no dtype fits the device's limits`);
  }
  dev.destroy();
});

// precision "f16-pv" through the table: the f16 P V tile serves f16 ops that ask for it on
// devices with shader-f16 and subgroups of 32 (NVIDIA); elsewhere the default tile runs. Either
// way the output stays within the f16 tolerance of float64 and of the default op.
gpuTest("precision f16-pv: f16 P V where the table has it, the default elsewhere", async () => {
  const dev = await featureDevice();
  const ctx = new GpuContext(dev);
  const f16Tiles = dev.features.has("shader-f16") && ctx.subgroupSize === 32;
  const geom = geometry({ frames: 2, height: 16, width: 32, textTokens: 7 });
  const plan = buildPlan(geom);
  for (const N of [65, 257]) {
    const spec = denseSpec({ tokens: N, headDim: 128, layout: "BSHD", dtype: "f16" });
    const rng = new Rng(N + 5);
    const [q, k, v] = [0, 1, 2].map(() => tensor("f16", N * 2 * 128, rng));
    const fast = new WebGpuOp(ctx, { ...spec, precision: "f16-pv" }, undefined, () => {});
    const ref = new WebGpuOp(ctx, spec, undefined, () => {});
    assert.equal(!!(fast.config as TiledVariant).f16PV, f16Tiles, "f16 P V in use");
    assert.ok(!(ref.config as TiledVariant).f16PV, "the default op keeps f32 P V");
    const out = await fast.run(q, k, v);
    assertClose(out, attention64(spec, q, k, v), TOL.f16, `f16-pv dense N=${N}`);
    assertClose(out, await ref.run(q, k, v), TOL.f16, `f16-pv dense N=${N} vs default`);
    fast.dispose();
    ref.dispose();
  }
  const spec = draftSpec(geom, plan, { headDim: 128, layout: "BSHD", dtype: "f16" });
  const rng = new Rng(17);
  const [q, k, v] = [0, 1, 2].map(() => tensor("f16", plan.tokens * 2 * 128, rng));
  const fast = new WebGpuOp(ctx, { ...spec, precision: "f16-pv" }, plan, () => {});
  const ref = new WebGpuOp(ctx, spec, plan, () => {});
  assert.equal(!!(fast.config as TiledVariant).f16PV, f16Tiles, "f16 P V in use (draft)");
  const out = await fast.run(q, k, v), base = await ref.run(q, k, v);
  assert.deepEqual((await fast.lastMask()).mask, (await ref.lastMask()).mask);
  assertClose(out, base, TOL.f16, "f16-pv draft vs default");
  fast.dispose();
  ref.dispose();
  dev.destroy();
});

gpuTest("variants: default limits pick 16 KiB tiles, adapter limits larger ones", async () => {
  const small = createWebGpuBackend({ device: await device("small"), reason: "t", features: [] });
  const full = createWebGpuBackend({ device: await device("full"), reason: "t", features: [] });
  const spec: DenseSpec = {
    batch: 1,
    tokens: 8,
    heads: 1,
    headDim: 128,
    layout: "BSHD",
    dtype: "f32",
    scale: 1,
  };
  const a = small.dense(spec) as WebGpuOp, b = full.dense(spec) as WebGpuOp;
  assert.ok(a.config.smemBytes <= 16384);
  const big = (await device("full")).limits.maxComputeWorkgroupStorageSize;
  assert.ok(b.config.smemBytes <= big);
  // More workgroup memory buys a larger (register-tiled) variant.
  if (big >= 32768) assert.ok(b.config.smemBytes > a.config.smemBytes);
  a.dispose();
  b.dispose();
});

// ---------------------------------------------------------------------------------------------
// Full draft run
// ---------------------------------------------------------------------------------------------

/** Float64 draft map of one (b, h): window means, softmax(Qd Kd^T * scale). */
function draftMap64(
  spec: DraftSpec,
  plan: Plan,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  b: number,
  h: number,
) {
  const { g } = plan;
  const D = spec.headDim;
  const mean = (x: ArrayLike<number>, i: number) => {
    const m = new Float64Array(D);
    for (let r = 0; r < plan.tileLen[i]; r++) {
      const t = plan.order[plan.tileStart[i] + r];
      for (let d = 0; d < D; d++) m[d] += x[at(spec, b, t, h) + d];
    }
    return m.map((v) => v / plan.tileLen[i]);
  };
  const qd = Array.from({ length: g }, (_, i) => mean(q, i));
  const kd = Array.from({ length: g }, (_, i) => mean(k, i));
  const p = new Float64Array(g * g);
  for (let i = 0; i < g; i++) {
    const s = kd.map((kj) => qd[i].reduce((a, x, d) => a + x * kj[d], 0) * spec.scale);
    const m = Math.max(...s);
    const e = s.map((x) => Math.exp(x - m));
    const z = e.reduce((a, x) => a + x, 0);
    for (let j = 0; j < g; j++) p[i * g + j] = e[j] / z;
  }
  return p;
}

/** No entry of `p` within 1e-4 (relative) of the keep-th largest or of its row's maximum. */
function clearMargins(p: Float64Array, g: number, keep: number): boolean {
  const near = (a: number, b: number) => Math.abs(a - b) <= 1e-4 * Math.max(a, b);
  const t = Float64Array.from(p).sort().reverse()[keep - 1];
  for (let i = 0; i < g; i++) {
    const row = p.subarray(i * g, (i + 1) * g);
    const m = Math.max(...row);
    for (const x of row) {
      if ((x !== t && near(x, t)) || (x !== m && near(x, m))) return false;
    }
  }
  return true;
}

/**
 * Video-like inputs: a random direction per window plus noise, so the draft map has clear gaps
 * and float64 and f32 select the same blocks (uniform noise would make P nearly flat).
 */
function windowed(spec: DraftSpec, plan: Plan, rng: Rng): Float32Array | Float16Array {
  const { batch: B, heads: H, headDim: D } = spec;
  const x = tensor(spec.dtype, B * plan.tokens * H * D, rng);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < plan.tiles; t++) {
        const dir = Array.from({ length: D }, () => 2 * rng.next());
        for (let r = 0; r < plan.tileLen[t]; r++) {
          const i = at(spec, b, plan.order[plan.tileStart[t] + r], h);
          for (let d = 0; d < D; d++) x[i + d] = dir[d] + 0.3 * x[i + d];
        }
      }
    }
  }
  return x;
}

for (
  const c of [
    { layout: "BSHD", dtype: "f32", text: 130, position: "after", sparsity: 0.7, seed: 3 },
    { layout: "BHSD", dtype: "f16", text: 5, position: "before", sparsity: 0.5, seed: 4 },
    { layout: "BHSD", dtype: "f32", text: 0, position: "after", sparsity: 0, seed: 5 },
  ] as const
) {
  gpuTest(
    `full draft run ${c.layout} ${c.dtype} text ${c.text} ${c.position} sparsity ${c.sparsity}`,
    async () => {
      const dev = await device();
      const backend = createWebGpuBackend({ device: dev, reason: "test", features: [] });
      const geom = geometry({
        frames: 2,
        height: 13,
        width: 21,
        textTokens: c.text,
        textPosition: c.position,
      });
      const plan = buildPlan(geom);
      const spec = draftSpec(geom, plan, {
        batch: 2,
        headDim: 32,
        layout: c.layout,
        dtype: c.dtype,
        sparsity: c.sparsity,
      });
      const size = 2 * plan.tokens * 2 * 32;
      // The mask is compared exactly with the float64 map's: advance the seed until no entry sits
      // within 1e-4 (relative) of the threshold or of its row maximum, where f32 may flip it.
      let seed = c.seed, q, k, maps: Float64Array[];
      for (;; seed += 100) {
        const rng = new Rng(seed);
        q = windowed(spec, plan, rng);
        k = windowed(spec, plan, rng);
        maps = [0, 1, 2, 3].map((x) => draftMap64(spec, plan, q!, k!, x >> 1, x & 1));
        if (maps.every((p64) => clearMargins(p64, plan.g, spec.keep))) break;
        assert.ok(seed < c.seed + 100 * 50, "no seed with clear margins");
      }
      const v = tensor(c.dtype, size, new Rng(seed + 1));
      const op = backend.draft(spec, plan);
      const before = await op.lastMask();
      assert.equal(before.density, 0);
      const out = await op.run(q, k, v);
      const { mask, density, g } = await op.lastMask();
      assert.equal(g, plan.g);
      let kept = 0;
      for (let b = 0; b < 2; b++) {
        for (let h = 0; h < 2; h++) {
          const p64 = maps[b * 2 + h];
          const want = selectMask(Float32Array.from(p64), g, spec.keep);
          const got = mask.subarray(((b * 2 + h) * g) * g, ((b * 2 + h) * g + g) * g);
          assert.deepEqual(Array.from(got), Array.from(want), `mask of batch ${b} head ${h}`);
          kept += want.reduce((a, x) => a + x, 0);
        }
      }
      assert.equal(density, kept / mask.length);
      if (c.sparsity === 0) assert.equal(density, 1);
      // Keys of query token i: tokens of the kept video tiles of its tile, plus every text token.
      const tileOf = new Int32Array(plan.tokens);
      for (let t = 0; t < plan.tiles; t++) {
        for (let r = 0; r < plan.tileLen[t]; r++) tileOf[plan.order[plan.tileStart[t] + r]] = t;
      }
      const keys = (b: number, h: number, i: number) => {
        const ti = tileOf[i];
        const js: number[] = [];
        for (let j = 0; j < plan.tokens; j++) {
          const tj = tileOf[j];
          if (ti >= g || tj >= g || mask[((b * 2 + h) * g + ti) * g + tj]) js.push(j);
        }
        return js;
      };
      assertClose(out, attention64(spec, q, k, v, keys), TOL[c.dtype], "draft output");
      op.dispose();
      backend.dispose();
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Stage profiling (timestamp queries)
// ---------------------------------------------------------------------------------------------

// profile(): one timed pass per stage; every stage of a percentile draft run is present and
// positive, their sum fits inside the wall time of that run, and the output equals a plain run's.
gpuTest("profile: per-stage GPU times of a draft run", async () => {
  const a = adapter!;
  const dev = await a.requestDevice({
    requiredFeatures: a.features.has("timestamp-query") ? ["timestamp-query"] : [],
  });
  const ctx = new GpuContext(dev);
  const geom = geometry({ frames: 2, height: 16, width: 32, textTokens: 9 });
  const plan = buildPlan(geom);
  const D = 64, H = 2;
  const spec = draftSpec(geom, plan, { heads: H, headDim: D, layout: "BSHD", dtype: "f32" });
  const rng = new Rng(11);
  const n = plan.tokens * H * D;
  const [q, k, v] = [0, 1, 2].map(() => upload(dev, tensor("f32", n, rng)));
  const out = storage(dev, n * 4), ref = storage(dev, n * 4);
  const op = new WebGpuOp(ctx, spec, plan, () => {});
  await op.runBuffers({ q, k, v, out: ref });
  await dev.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  const times = await op.profile({ q, k, v, out });
  const wall = performance.now() - t0;
  if (!a.features.has("timestamp-query")) {
    assert.equal(times, undefined);
  } else {
    assert.ok(times, "profile() resolved no times");
    for (const s of ["pool", "map", "select", "lists", "attention"] as const) {
      assert.ok(times[s] > 0, `stage ${s}: ${times[s]} ms`);
    }
    const sum = Object.values(times).reduce((x, y) => x + y, 0);
    assert.ok(sum <= wall + 1, `stages sum to ${sum} ms, the run took ${wall} ms`);
  }
  assert.deepEqual(await readBack(dev, out, n * 4), await readBack(dev, ref, n * 4));
  op.dispose();
  for (const b of [q, k, v, out, ref]) b.destroy();
  dev.destroy();
});

Deno.test("variants: subgroups of 32 pick packed-Q, V-over-K tiles; 16 KiB devices too", () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024 };
  type Picked = TiledVariant & ReturnType<typeof flashConfig>;
  const pick = (headDim: number, dtype: DType, shaderF16: boolean, l = limits) =>
    pickFlashVariant(headDim, l, { dtype, shaderF16, subgroupSize: 32 }) as Picked;
  /** Rows, the options in use, workgroup memory and threads, as one line. */
  const shape = (c: Picked) =>
    [
      `${c.br} rows`,
      ...([
        "f16KV",
        "f16QT",
        "packedQT",
        "subgroupRows",
        "vOverK",
        "swizzleK",
        "keyHalves",
        "f16PV",
      ] as const)
        .filter((o) => c[o]),
      `${c.smemBytes} B`,
      `${c.threads} threads`,
    ].join(" ");
  // f16: 64 x 32, f16 tiles, Q^T packed 8 rows per load, V over K, 24 KiB.
  assert.equal(
    shape(pick(128, "f16", true)),
    "64 rows f16KV f16QT packedQT subgroupRows vOverK swizzleK 24576 B 256 threads",
  );
  // precision "f16-pv": the same tile with P V in f16 (and its 16 KiB twin below).
  const fast = pickFlashVariant(128, limits, {
    dtype: "f16",
    shaderF16: true,
    subgroupSize: 32,
    f16PV: true,
  }) as Picked;
  assert.equal(
    shape(fast),
    "64 rows f16KV f16QT packedQT subgroupRows vOverK swizzleK f16PV 24576 B 256 threads",
  );
  // f32 inputs never take it.
  assert.ok(
    !(pickFlashVariant(128, limits, { dtype: "f32", subgroupSize: 32, f16PV: true }) as Picked)
      .f16PV,
  );
  // f32 inputs, or f16 without shader-f16: f32 tiles with sub-rows (two row groups of 16 lanes
  // per subgroup), exactly 48 KiB.
  for (const [dtype, shaderF16] of [["f32", true], ["f16", false]] as const) {
    const c = pick(128, dtype, shaderF16);
    assert.equal(shape(c), "64 rows subgroupRows vOverK swizzleK 49152 B 256 threads");
    assert.deepEqual([c.cg, c.tn, c.td4, c.consts.SUBGROUP_SIZE], [16, 2, 2, 32]);
    // Without subgroups of 32 the next row (no sub-rows) serves.
    const none = pickFlashVariant(128, limits, { dtype, shaderF16, subgroupSize: 0 });
    assert.ok(!(none as Picked).subgroupRows && none.smemBytes <= 49152);
  }
  // headDim / 4 not a power of two: no swizzle; still a row that fits.
  const odd = pick(100, "f16", true);
  assert.ok(!odd.swizzleK && odd.smemBytes <= 49152);
  // WebGPU's default limits: the 32-row twin in exactly 16 KiB; f32 the chunked kernel.
  const dflt = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256 };
  assert.equal(
    shape(pick(128, "f16", true, dflt)),
    "32 rows f16KV f16QT packedQT subgroupRows vOverK swizzleK 16384 B 128 threads",
  );
  assert.equal(
    shape(pickFlashVariant(128, dflt, {
      dtype: "f16",
      shaderF16: true,
      subgroupSize: 32,
      f16PV: true,
    }) as Picked),
    "32 rows f16KV f16QT packedQT subgroupRows vOverK swizzleK f16PV 16384 B 128 threads",
  );
  // f32 within 16 KiB: the sub-rows tile (16 x 16, 64 threads), no longer the chunked kernel.
  assert.equal(
    shape(pickFlashVariant(128, dflt, { dtype: "f32", subgroupSize: 32 }) as Picked),
    "16 rows subgroupRows vOverK swizzleK 16384 B 64 threads",
  );
  // Head dim 64: sub-rows in f32 tiles (24 KiB) for both dtypes; within the default limits key
  // halves, packed f16 tiles in 12 KiB or f32 tiles in 16 KiB.
  for (const dtype of ["f16", "f32"] as const) {
    assert.equal(
      shape(pick(64, dtype, true)),
      "64 rows subgroupRows vOverK swizzleK 24576 B 256 threads",
    );
  }
  assert.equal(
    shape(pick(64, "f16", true, dflt)),
    "64 rows f16KV f16QT packedQT subgroupRows vOverK swizzleK keyHalves 12288 B 256 threads",
  );
  assert.equal(
    shape(pick(64, "f32", true, dflt)),
    "32 rows subgroupRows vOverK swizzleK keyHalves 16384 B 256 threads",
  );
});

Deno.test("variants: draft ops on ragged windows take the 32-row twin", () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024 };
  const pick = (g: Geometry) =>
    pickFlashVariant(128, limits, {
      dtype: "f16",
      shaderF16: true,
      subgroupSize: 32,
      tileLens: buildPlan(g).tileLen,
    }).br;
  // Wan 480p frames (30 x 52 in 8 x 16 windows): 87% of 64-row items busy, 99.5% of 32-row.
  assert.equal(pick(geometry({ frames: 2, height: 30, width: 52, textTokens: 0 })), 32);
  // f32: the 64-row sub-rows tile has no 32-row twin (the next 32-row tile is another shape,
  // 0.7x per row), so Wan keeps it.
  const f32 = pickFlashVariant(128, limits, {
    dtype: "f32",
    subgroupSize: 32,
    tileLens: buildPlan(geometry({ frames: 2, height: 30, width: 52, textTokens: 0 })).tileLen,
  });
  assert.equal(f32.br, 64);
  // HunyuanVideo 768p frames (48 x 80): every window full, the faster 64-row tile.
  assert.equal(pick(geometry({ frames: 2, height: 48, width: 80, textTokens: 256 })), 64);
  // Dense ops (no tiles) keep the first fit.
  assert.equal(
    pickFlashVariant(128, limits, { dtype: "f16", shaderF16: true, subgroupSize: 32 }).br,
    64,
  );
});
