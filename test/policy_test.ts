/**
 * Block-selection policies beyond the reference (rowTopK, rowMass), the sampled and hybrid
 * importance estimators, and mask reuse (`maskEvery`), against float64 references written here
 * from the definitions of src/selection.ts (sharing no code with asm/selection.ts or the WGSL):
 * - the row policies on the SAME f32 maps: the WebAssembly reference (`selectRowMask`), the GPU
 *   kernel (wgsl/select_row.wgsl) and the float64 definition, ties included (rowMass against
 *   float64 only away from a near-tie of the cumulative mass, since its definition quantises);
 * - the whole operator through the public API for every policy x estimator: wasm and webgpu
 *   masks exactly equal to the float64 reference's (seeds advanced past near-ties, as in the
 *   conformance suite), every query block with a key block, outputs within the tolerance rule;
 * - `sparsity = 0` is dense attention under every policy and estimator;
 * - `maskEvery`: the mask is computed on the first run and every k-th, reused in between;
 * - option validation: typed errors naming the field.
 *
 * WebGPU runs on whatever adapter Deno finds (llvmpipe here), under the conformance suite's
 * missing-GPU policy (test/_cases.ts `gpuMissing`).
 */
import assert from "node:assert/strict";
import { DraftAttentionError, openRuntime, type Runtime } from "../mod.ts";
import { sampleTable, selectRowMask, tokenThreshold } from "../src/selection.ts";
import { buildPlan } from "../src/plan.ts";
import type {
  DraftAttentionOptions,
  DType,
  Estimator,
  Layout,
  Policy,
  TensorArray,
} from "../src/types.ts";
import { keepCount, resolveDraft, rowKeepCount } from "../src/validate.ts";
import { GpuContext } from "../src/webgpu/context.ts";
import { packParams } from "../src/webgpu/kernel.ts";
import { WebGpuOp } from "../src/webgpu/op.ts";
import {
  ROW_PARAMS,
  rowKernel,
  SAMPLED_TUNING,
  type TiledShape,
  tiledShape,
  TOKENS_TUNING,
  TOKENS_WORDS,
  TokensSelect,
} from "../src/webgpu/mask.ts";
import { type Availability, gpuMissing, MASK_MARGIN, reasonOf, tolerance } from "./_cases.ts";
import {
  attentionF64,
  attentionNaive,
  type Dims,
  draftMap,
  type Inputs,
  maskedKeys,
  maxAbsErr,
  type RefGeometry,
  Rng,
  selectBlocks,
  toBHND,
  type TokenOrder,
  tokenOrder,
  videoInputs,
  windowMeans,
} from "./reference.ts";

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

const BACKENDS = ["wasm", "webgpu"] as const;
type Name = typeof BACKENDS[number];
const runtimes = new Map<Name, Runtime>();
const availability = new Map<Name, Availability>();
for (const name of BACKENDS) {
  try {
    const rt = await openRuntime({ backend: name });
    runtimes.set(name, rt);
    availability.set(name, {});
  } catch (e) {
    availability.set(name, name === "webgpu" ? gpuMissing(reasonOf(e)) : { failure: reasonOf(e) });
  }
}

function test(name: string, needs: readonly Name[], fn: () => Promise<void> | void): void {
  const skip = needs.map((n) => availability.get(n)!.skip).find((s) => s);
  Deno.test({
    name: `policy: ${name}${skip ? ` [skipped: ${skip}]` : ""}`,
    ignore: skip !== undefined,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => {
      for (const n of needs) {
        const f = availability.get(n)!.failure;
        if (f) throw new Error(`${n}: ${f}`);
      }
      return fn();
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Float64 definitions (src/selection.ts, written again here)
// ---------------------------------------------------------------------------------------------

/** Fixed-point bits of rowMass's masses (part of the definition). */
const MASS_BITS = 22;

/** A selection with how safe its exact comparison against an f32 computation is. */
interface RefSelection {
  mask: Uint8Array;
  /** Smallest relative gap between a threshold and the largest entry below it (0: a tie). */
  valueMargin: number;
  /**
   * rowMass: whether every row's cumulative mass clears its target, on both sides of the
   * crossing, by more than the fixed-point error (g + 2) * 2^-22 plus `slack` of the row's mass.
   */
  massSafe: boolean;
  /** The same per row. */
  rowSafe?: boolean[];
}

/**
 * Row policies from the definition: row i keeps M[i][j] >= max(t_i, u_i); t_i = the rowKeep-th
 * largest (ties counted), u_i (with `tau`) = the largest value v whose cumulative mass (sum of the
 * entries >= v, in exact arithmetic) reaches tau times the row's sum.
 */
function refRows(
  p: ArrayLike<number>,
  g: number,
  rowKeep: number,
  tau?: number,
  slack = 1e-4,
  weights?: readonly number[],
): RefSelection {
  // Budget "tokens": masses weighted by the key block's tokens (see src/selection.ts).
  const wt = (j: number) => weights ? weights[j] : 1;
  const wmax = weights ? Math.max(...weights) : 1;
  const mask = new Uint8Array(g * g);
  let valueMargin = Infinity;
  const rowSafe: boolean[] = [];
  for (let i = 0; i < g; i++) {
    rowSafe.push(true);
    const row = Array.from({ length: g }, (_, j) => p[i * g + j]);
    const desc = [...row].sort((a, b) => b - a);
    // Entries by decreasing value, for their weighted masses.
    const byValue = Array.from({ length: g }, (_, j) => j).sort((a, b) => row[b] - row[a]);
    let thr = desc[rowKeep - 1];
    if (tau !== undefined) {
      const z = row.reduce((a, b, j) => a + b * wt(j), 0);
      const goal = tau * z;
      let cum = 0;
      for (let x = 0; x < g;) {
        const v = row[byValue[x]];
        const before = cum;
        while (x < g && row[byValue[x]] === v) cum += row[byValue[x]] * wt(byValue[x++]);
        if (cum >= goal || x === g) {
          const err = (g + 2) * 2 ** -MASS_BITS * wmax + slack * z;
          if (!(cum - goal > err && goal - before > err)) rowSafe[i] = false;
          thr = Math.max(thr, v);
          break;
        }
      }
    }
    const below = desc.find((v) => v < thr);
    if (below !== undefined) valueMargin = Math.min(valueMargin, (thr - below) / thr);
    for (let j = 0; j < g; j++) mask[i * g + j] = row[j] >= thr ? 1 : 0;
  }
  return { mask, valueMargin, massSafe: rowSafe.every((x) => x), rowSafe };
}

/** `(sqrt(5) - 1) / 2`, the column step of the sample pattern. */
const GOLDEN = (Math.sqrt(5) - 1) / 2;

/** Window rows and columns of video block `i`. */
function windowShape(geom: RefGeometry, i: number): { hh: number; ww: number } {
  const nh = Math.ceil(geom.height / geom.poolH), nw = Math.ceil(geom.width / geom.poolW);
  const wr = Math.floor(i / nw) % nh, wc = i % nw;
  return {
    hh: Math.min(geom.poolH, geom.height - wr * geom.poolH),
    ww: Math.min(geom.poolW, geom.width - wc * geom.poolW),
  };
}

/**
 * Sampled query tokens (raster indices) of each video block: sample s of n = min(samples, len)
 * at row floor((s + 0.5) hh / n), column floor(frac((s + 0.5) GOLDEN) ww), or the next free
 * token of the window (raster order inside the window, wrapping).
 */
function sampledTokens(geom: RefGeometry, ord: TokenOrder, samples: number): number[][] {
  return ord.blockTokens.map((members, i) => {
    const { hh, ww } = windowShape(geom, i);
    assert.equal(hh * ww, members.length);
    const n = Math.min(samples, members.length);
    const used = new Set<number>();
    const out: number[] = [];
    for (let s = 0; s < n; s++) {
      let x = Math.floor(((s + 0.5) * hh) / n) * ww + Math.floor((((s + 0.5) * GOLDEN) % 1) * ww);
      while (used.has(x)) x = (x + 1) % members.length;
      used.add(x);
      out.push(members[x]);
    }
    return out;
  });
}

/**
 * The sampled map in float64: I[i][j] = len_i / (maxLen * n_i) * sum over the sampled queries of
 * block i of their softmax mass (over every key) on the keys of block j.
 */
function sampledMapRef(
  inputs: Inputs,
  dims: Dims,
  geom: RefGeometry,
  ord: TokenOrder,
  samples: number,
  scale: number,
  density = false,
): Float64Array {
  const { batch: B, heads: H, headDim: D, tokens: N } = dims;
  const g = ord.g;
  const Q = toBHND(inputs.q, dims), K = toBHND(inputs.k, dims);
  const sampled = sampledTokens(geom, ord, samples);
  const maxLen = Math.max(...ord.blockTokens.map((m) => m.length));
  const out = new Float64Array(B * H * g * g);
  const s = new Float64Array(N);
  for (let bh = 0; bh < B * H; bh++) {
    const base = bh * N * D;
    for (let i = 0; i < g; i++) {
      const acc = new Float64Array(g);
      for (const t of sampled[i]) {
        let m = -Infinity;
        for (let j = 0; j < N; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += Q[base + t * D + d] * K[base + j * D + d];
          s[j] = dot * scale;
          m = Math.max(m, s[j]);
        }
        let z = 0;
        for (let j = 0; j < N; j++) z += s[j] = Math.exp(s[j] - m);
        for (let j = 0; j < N; j++) if (ord.blockOf[j] >= 0) acc[ord.blockOf[j]] += s[j] / z;
      }
      const c = ord.blockTokens[i].length / (maxLen * sampled[i].length);
      for (let j = 0; j < g; j++) {
        // Budget "tokens": the mean sample's mass per key token of block j.
        out[(bh * g + i) * g + j] = density
          ? acc[j] / (sampled[i].length * ord.blockTokens[j].length)
          : c * acc[j];
      }
    }
  }
  return out;
}

/** The importance map of an estimator in float64, `[B, H, g, g]`. */
function importanceRef(
  estimator: Estimator,
  inputs: Inputs,
  dims: Dims,
  geom: RefGeometry,
  ord: TokenOrder,
  samples: number,
  scale: number,
  density = false,
): Float64Array {
  const g = ord.g;
  const shape = { batch: dims.batch, heads: dims.heads, g, headDim: dims.headDim, scale };
  const draft = estimator === "sampled" ? undefined : draftMap(
    windowMeans(inputs.q, dims, ord),
    windowMeans(inputs.k, dims, ord),
    shape,
  );
  if (estimator === "draft") return draft!;
  const sampled = sampledMapRef(inputs, dims, geom, ord, samples, scale, density);
  if (estimator === "sampled") return sampled;
  if (density) {
    // The draft map per key token: over the mean window size g / videoTokens, as an f32.
    const c = Math.fround(g / ord.blockTokens.reduce((a, b) => a + b.length, 0));
    return sampled.map((x, e) => 0.5 * (c * draft![e] + x));
  }
  const maxLen = Math.max(...ord.blockTokens.map((m) => m.length));
  return sampled.map((x, e) => {
    const i = Math.floor(e / g) % g;
    return 0.5 * ((ord.blockTokens[i].length / maxLen) * draft![e] + x);
  });
}

/**
 * Percentile under the token budget in float64: the entries in decreasing order until their
 * token pairs `len_i * len_j` reach `ceil((1 - sparsity) * V^2)`; the value reached is the
 * threshold, ties kept, each row's maximum kept. `margin`: relative gap from the threshold to
 * the largest value below it and from each row's maximum to its largest dropped rival.
 */
function selectTokensRef(
  m: Float64Array,
  lens: readonly number[],
  sparsity: number,
): { mask: Uint8Array; margin: number } {
  const g = lens.length;
  const V = lens.reduce((a, b) => a + b, 0);
  const budget = Math.min(V * V, Math.max(1, Math.ceil((1 - sparsity) * V * V - V * V * 1e-12)));
  const idx = Array.from({ length: g * g }, (_, e) => e).sort((a, b) => m[b] - m[a]);
  let pairs = 0, x = 0;
  for (; x < idx.length; x++) {
    pairs += lens[Math.floor(idx[x] / g)] * lens[idx[x] % g];
    if (pairs >= budget) break;
  }
  const t = m[idx[x]];
  let below = -Infinity;
  for (const v of m) if (v < t && v > below) below = v;
  let margin = below > -Infinity ? (t - below) / t : Infinity;
  const mask = new Uint8Array(g * g);
  for (let i = 0; i < g; i++) {
    const row = m.subarray(i * g, (i + 1) * g);
    const mx = Math.max(...row);
    let rival = -Infinity, first = true;
    for (let j = 0; j < g; j++) {
      mask[i * g + j] = row[j] >= t || row[j] === mx ? 1 : 0;
      if (row[j] === mx && first) first = false;
      else if (row[j] < t && row[j] > rival) rival = row[j];
    }
    if (rival > -Infinity) margin = Math.min(margin, (mx - rival) / mx);
  }
  return { mask, margin };
}

/** A policy applied to every (batch, head) of a map; `lens` (window sizes): budget "tokens". */
function selectRef(
  map: Float64Array,
  g: number,
  policy: Policy,
  sparsity: number,
  tau: number,
  lens?: readonly number[],
): RefSelection {
  const mask = new Uint8Array(map.length);
  let valueMargin = Infinity;
  let massSafe = true;
  for (let bh = 0; bh < map.length / (g * g); bh++) {
    const m = map.subarray(bh * g * g, (bh + 1) * g * g);
    let sel: RefSelection;
    if (policy === "percentile" && lens) {
      const r = selectTokensRef(m, lens, sparsity);
      sel = { mask: r.mask, valueMargin: r.margin, massSafe: true };
    } else if (policy === "rowMass" && lens) {
      // Each row's mass threshold (no rowTopK cap), and the budget's threshold (row maxima kept).
      const rows = refRows(m, g, g, tau, 1e-4, lens);
      const budget = selectTokensRef(m, lens, sparsity);
      sel = {
        mask: rows.mask.map((x, e) => x & budget.mask[e]),
        valueMargin: Math.min(rows.valueMargin, budget.margin),
        massSafe: rows.massSafe,
      };
    } else if (policy === "percentile") {
      const r = selectBlocks(m, g, keepCount(g, sparsity));
      sel = { mask: r.mask, valueMargin: r.margin, massSafe: true };
    } else {
      sel = refRows(m, g, rowKeepCount(g, sparsity), policy === "rowMass" ? tau : undefined);
    }
    mask.set(sel.mask, bh * g * g);
    valueMargin = Math.min(valueMargin, sel.valueMargin);
    massSafe &&= sel.massSafe;
  }
  return { mask, valueMargin, massSafe };
}

// ---------------------------------------------------------------------------------------------
// The row policies on the same maps: WebAssembly, GPU kernel, float64
// ---------------------------------------------------------------------------------------------

/** Row-normalised maps like a draft map; `levels` > 0 quantises them so that ties abound. */
function randomMaps(g: number, count: number, rng: Rng, levels: number, spread: number) {
  const p = new Float32Array(count * g * g);
  for (let r = 0; r < count * g; r++) {
    let z = 0;
    for (let j = 0; j < g; j++) {
      let e = Math.exp(spread * rng.next());
      if (levels) e = Math.ceil((e / Math.exp(spread)) * levels);
      p[r * g + j] = e;
      z += e;
    }
    for (let j = 0; j < g; j++) p[r * g + j] = p[r * g + j] / z;
  }
  return p;
}

async function gpuRows(
  device: GPUDevice,
  p: Float32Array,
  count: number,
  g: number,
  rowKeep: number,
  tau: number | undefined,
): Promise<Uint8Array> {
  const ctx = new GpuContext(device);
  const U = GPUBufferUsage;
  const tiles = g + 1; // one text tile: lists end with it
  const make = (size: number, usage: number, data?: ArrayBufferView) => {
    const b = device.createBuffer({ size: Math.max(16, size), usage, mappedAtCreation: !!data });
    if (data) {
      new Uint8Array(b.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, size));
      b.unmap();
    }
    return b;
  };
  const pBuf = make(p.byteLength, U.STORAGE, p);
  const counts = make(count * tiles * 4, U.STORAGE | U.COPY_SRC);
  const lists = make(count * tiles * tiles * 4, U.STORAGE | U.COPY_SRC);
  const params = make(
    32,
    U.UNIFORM,
    new Uint8Array(
      packParams(ROW_PARAMS, {
        nbh: count,
        g,
        tiles,
        k: rowKeep,
        mass: tau === undefined ? 0 : 1,
        tau: tau ?? 1,
        pair0: 0,
        floor: 0,
      }),
    ),
  );
  const unused = make(16, U.STORAGE);
  const kernel = rowKernel(ctx);
  const readC = make(counts.size, U.MAP_READ | U.COPY_DST);
  const readL = make(lists.size, U.MAP_READ | U.COPY_DST);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  kernel.dispatch(
    pass,
    kernel.bind({ params, p: pBuf, counts, lists, state: unused, tiles: unused }),
    count * g,
  );
  pass.end();
  enc.copyBufferToBuffer(counts, 0, readC, 0, counts.size);
  enc.copyBufferToBuffer(lists, 0, readL, 0, lists.size);
  device.queue.submit([enc.finish()]);
  await Promise.all([readC.mapAsync(GPUMapMode.READ), readL.mapAsync(GPUMapMode.READ)]);
  const c = new Uint32Array(readC.getMappedRange());
  const l = new Uint32Array(readL.getMappedRange());
  const mask = new Uint8Array(count * g * g);
  for (let x = 0; x < count; x++) {
    for (let i = 0; i < g; i++) {
      const n = c[x * tiles + i];
      const row = (x * tiles + i) * tiles;
      assert.equal(l[row + n - 1], g, `row ${i}: the text tile ends the list`);
      for (let e = 0; e < n - 1; e++) {
        if (e > 0) assert.ok(l[row + e] > l[row + e - 1], "list increasing");
        mask[(x * g + i) * g + l[row + e]] = 1;
      }
    }
  }
  readC.unmap();
  readL.unmap();
  for (const b of [pBuf, counts, lists, params, readC, readL, unused]) b.destroy();
  return mask;
}

/**
 * The GPU token-budget thresholds (wgsl/select_tokens*.wgsl) of `count` maps, as f32 values,
 * with `chunk` entries per histogram workgroup (`TOKENS_TUNING`'s when omitted). The passes run
 * twice over the same bins: the second run must find them cleared and give the same thresholds.
 */
async function gpuTokenThresholds(
  device: GPUDevice,
  p: Float32Array,
  count: number,
  lens: readonly number[],
  budget: number,
  chunk = TOKENS_TUNING.chunk,
): Promise<Float32Array> {
  const ctx = new GpuContext(device);
  const U = GPUBufferUsage;
  const g = lens.length;
  const made: GPUBuffer[] = [];
  const make = (size: number, usage: number, data?: ArrayBufferView) => {
    const b = device.createBuffer({ size: Math.max(16, size), usage, mappedAtCreation: !!data });
    if (data) {
      new Uint8Array(b.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, size));
      b.unmap();
    }
    made.push(b);
    return b;
  };
  const tt = new Uint32Array(2 * g);
  lens.forEach((len, i) => tt[2 * i + 1] = len);
  const pBuf = make(p.byteLength, U.STORAGE, p);
  const tiles = make(tt.byteLength, U.STORAGE, tt);
  const state = make(count * 8, U.STORAGE | U.COPY_SRC);
  const hist = make(count * TOKENS_WORDS * 4, U.STORAGE);
  const select = new TokensSelect(ctx);
  const saved = TOKENS_TUNING.chunk;
  TOKENS_TUNING.chunk = chunk;
  let passes;
  try {
    passes = select.bind((_, size, usage, data) => make(size, usage, data), {
      n: count,
      g,
      pairs: budget,
      p: pBuf,
      tiles,
      state,
      hist,
    });
  } finally {
    TOKENS_TUNING.chunk = saved;
  }
  assert.equal(passes.chunks, Math.ceil((g * g) / chunk));
  const reads = [0, 1].map(() => make(state.size, U.MAP_READ | U.COPY_DST));
  const enc = device.createCommandEncoder();
  for (const read of reads) {
    const pass = enc.beginComputePass();
    select.record(pass, passes);
    pass.end();
    enc.copyBufferToBuffer(state, 0, read, 0, state.size);
  }
  device.queue.submit([enc.finish()]);
  const runs: Float32Array[] = [];
  for (const read of reads) {
    await read.mapAsync(GPUMapMode.READ);
    const s = new Uint32Array(read.getMappedRange().slice(0));
    read.unmap();
    for (let x = 0; x < count; x++) assert.equal(s[2 * x + 1], 0, `state[${x}].y`);
    runs.push(new Float32Array(Uint32Array.from({ length: count }, (_, x) => s[2 * x]).buffer));
  }
  for (const b of made) b.destroy();
  assert.deepEqual(runs[1], runs[0], "a second run over the bins the first one cleared");
  return runs[0];
}

test("token budget on the same f32 maps: WebAssembly = GPU kernel = float64, sums past 2^32", [
  "wasm",
  "webgpu",
], async () => {
  const device = runtimes.get("webgpu")!.device!;
  // g = 800 windows of 32-128 tokens: 5.1e9 pairs in all, so budgets and the bins of the
  // first radix pass pass 2^32 and the GPU's (lo, hi) carries matter.
  const cases = [{ g: 5, levels: 2 }, { g: 45, levels: 0 }, { g: 45, levels: 5 }];
  cases.push({ g: 800, levels: 0 });
  for (const c of cases) {
    const count = c.g > 100 ? 1 : 3;
    const rng = new Rng(c.g * 7 + c.levels);
    const p = randomMaps(c.g, count, rng, c.levels, 10);
    const sizes = [128, 128, 64, 32, 96];
    const lens = Array.from({ length: c.g }, (_, i) => sizes[(i * 7) % sizes.length]);
    const V = lens.reduce((a, b) => a + b, 0);
    if (c.g === 800) assert.ok(V * V > 2 ** 32, `${V * V} pairs`);
    for (const sparsity of [0.05, 0.5, 0.9, 0.99]) {
      const budget = Math.ceil((1 - sparsity) * V * V);
      const gpu = await gpuTokenThresholds(device, p, count, lens, budget);
      for (let x = 0; x < count; x++) {
        const m = p.subarray(x * c.g * c.g, (x + 1) * c.g * c.g);
        const what = `g=${c.g} levels=${c.levels} sparsity=${sparsity} map ${x}`;
        const wasm = tokenThreshold(m, lens, budget);
        // Float64: entries in decreasing order until their pairs reach the budget.
        const idx = Array.from(m.keys()).sort((a, b) => m[b] - m[a]);
        let pairs = 0, e = 0;
        for (; e < idx.length; e++) {
          pairs += lens[Math.floor(idx[e] / c.g)] * lens[idx[e] % c.g];
          if (pairs >= budget) break;
        }
        assert.equal(wasm, m[idx[e]], `wasm vs float64, ${what}`);
        assert.equal(gpu[x], wasm, `GPU vs wasm, ${what}`);
      }
    }
  }
});

test("token budget over many histogram workgroups per map: GPU = WebAssembly = float64, ties", [
  "wasm",
  "webgpu",
], async () => {
  const device = runtimes.get("webgpu")!.device!;
  // Maps whose values repeat (a constant map, a few powers of two with zeros and subnormals,
  // maps quantised to a few levels per row) and plain random ones; window sizes from 1 to 3000
  // tokens, so pair sums pass 2^32 inside one small chunk too; g = 97 is prime and its map
  // larger than every chunk but the whole map. Chunks of 1 entry (a workgroup per entry) up to
  // a whole map.
  const pick = (rng: Rng, values: readonly number[]) =>
    values[Math.min(values.length - 1, Math.floor(rng.next() * values.length))];
  const ties = (g: number, count: number, rng: Rng) =>
    Float32Array.from(
      { length: count * g * g },
      () => pick(rng, [0, 2 ** -130, 2 ** -126, 0.125, 0.125, 0.25, 0.5, 0.5, 1]),
    );
  const sizes = [1, 3000, 1024, 77, 2048, 128, 5];
  // Up to 65,535 tokens: a block's pairs near 2^32, so nearly every add wraps a 32-bit sum.
  const huge = [65535, 60000, 1, 40000, 65535];
  const cases: {
    g: number;
    what: string;
    p: (count: number, rng: Rng) => Float32Array;
    sizes: readonly number[];
  }[] = [
    { g: 1, what: "one entry", p: (n) => new Float32Array(n).fill(0.5), sizes },
    { g: 13, what: "constant", p: (n) => new Float32Array(n * 13 * 13).fill(0.25), sizes },
    { g: 13, what: "constant, huge windows", p: (n) => new Float32Array(n * 169), sizes: huge },
    { g: 45, what: "powers of two, zeros, subnormals", p: (n, rng) => ties(45, n, rng), sizes },
    { g: 45, what: "powers of two, huge windows", p: (n, rng) => ties(45, n, rng), sizes: huge },
    { g: 45, what: "4 levels per row", p: (n, rng) => randomMaps(45, n, rng, 4, 10), sizes },
    {
      g: 45,
      what: "random, huge windows",
      p: (n, rng) => randomMaps(45, n, rng, 0, 8),
      sizes: huge,
    },
    { g: 97, what: "random", p: (n, rng) => randomMaps(97, n, rng, 0, 12), sizes },
    { g: 97, what: "powers of two", p: (n, rng) => ties(97, n, rng), sizes },
  ];
  let compared = 0;
  for (const c of cases) {
    const count = 3;
    const rng = new Rng(c.g * 131 + c.what.length);
    const p = c.p(count, rng);
    const lens = Array.from({ length: c.g }, (_, i) => c.sizes[(i * 3) % c.sizes.length]);
    const V = lens.reduce((a, b) => a + b, 0);
    const total = V * V;
    assert.ok(Number.isSafeInteger(total));
    const budgets = [1, Math.ceil(total / 3), Math.ceil(0.9 * total), total - 1, total];
    const n = c.g * c.g;
    // A workgroup per entry only on the small maps (llvmpipe runs workgroups one by one).
    const tried = c.g < 50 ? [1, 7, 256, n] : [257, 1000, n];
    const chunks = [...new Set(tried.map((x) => Math.min(x, n)))];
    for (const budget of budgets.filter((b) => b >= 1)) {
      const wasm = Array.from(
        { length: count },
        (_, x) => tokenThreshold(p.subarray(x * n, (x + 1) * n), lens, budget),
      );
      for (let x = 0; x < count; x++) {
        // Float64: entries in decreasing order until their pairs reach the budget.
        const m = p.subarray(x * n, (x + 1) * n);
        const idx = Array.from(m.keys()).sort((a, b) => m[b] - m[a]);
        let pairs = 0, e = 0;
        for (; e < idx.length; e++) {
          pairs += lens[Math.floor(idx[e] / c.g)] * lens[idx[e] % c.g];
          if (pairs >= budget) break;
        }
        assert.equal(wasm[x], m[idx[e]], `wasm vs float64, g=${c.g} ${c.what} budget ${budget}`);
      }
      for (const chunk of chunks) {
        const gpu = await gpuTokenThresholds(device, p, count, lens, budget, chunk);
        const what = `g=${c.g} ${c.what} budget ${budget} of ${total}, chunk ${chunk}`;
        assert.deepEqual(Array.from(gpu), wasm, `GPU vs wasm, ${what}`);
        compared += count;
      }
    }
  }
  assert.ok(compared > 250, `${compared} thresholds`);
});

test("token budget over many histogram workgroups: the op's masks equal wasm's and float64", [
  "wasm",
  "webgpu",
], async () => {
  const saved = TOKENS_TUNING.chunk;
  for (const c of OP_CASES.slice(0, 2)) {
    for (const combo of COMBOS.filter((x) => x.budget === "tokens")) {
      const prep = prepare(c, combo);
      const masks: Uint8Array[] = [];
      for (const [name, chunk] of [["wasm", saved], ["webgpu", 5], ["webgpu", 64]] as const) {
        TOKENS_TUNING.chunk = chunk;
        const op = runtimes.get(name)!.draftAttention(draftOptions(c, combo));
        try {
          await op.run(prep.inputs.q, prep.inputs.k, prep.inputs.v);
          masks.push((await op.lastMask()).mask);
        } finally {
          op.dispose();
          TOKENS_TUNING.chunk = saved;
        }
      }
      const what = `${c.name}, ${combo.policy}/${combo.estimator}`;
      assert.deepEqual(masks[0], prep.sel.mask, `wasm vs float64, ${what}`);
      assert.deepEqual(masks[1], masks[0], `webgpu chunk 5 vs wasm, ${what}`);
      assert.deepEqual(masks[2], masks[0], `webgpu chunk 64 vs wasm, ${what}`);
    }
  }
});

const SAME_MAP_CASES: { g: number; levels: number; spread: number }[] = [
  { g: 1, levels: 0, spread: 4 },
  { g: 2, levels: 3, spread: 2 },
  { g: 7, levels: 0, spread: 8 },
  { g: 12, levels: 4, spread: 4 },
  { g: 45, levels: 0, spread: 12 },
  { g: 45, levels: 6, spread: 4 },
  { g: 300, levels: 0, spread: 30 },
  { g: 300, levels: 9, spread: 6 },
];

test("row policies on the same f32 maps: WebAssembly = GPU kernel = float64 definition", [
  "wasm",
  "webgpu",
], async () => {
  const device = runtimes.get("webgpu")!.device!;
  let mass = 0, massCompared = 0;
  for (const c of SAME_MAP_CASES) {
    const count = c.g > 100 ? 1 : 3;
    const p = randomMaps(c.g, count, new Rng(c.g * 31 + c.levels), c.levels, c.spread);
    for (const sparsity of c.g > 100 ? [0.5, 0.97] : [0, 0.5, 0.9, 0.97]) {
      const rowKeep = rowKeepCount(c.g, sparsity);
      for (const tau of [undefined, 0.3, 0.9, 1]) {
        const what = `g=${c.g} levels=${c.levels} rowKeep=${rowKeep} tau=${tau}`;
        const wasm = new Uint8Array(count * c.g * c.g);
        for (let x = 0; x < count; x++) {
          const px = p.subarray(x * c.g * c.g, (x + 1) * c.g * c.g);
          const got = selectRowMask(px, c.g, { rowKeep, tau });
          wasm.set(got, x * c.g * c.g);
          // Same f32 values: only the fixed-point masses and f32(tau) separate the two.
          const ref = refRows(px, c.g, rowKeep, tau, 1e-7);
          if (tau === undefined) {
            assert.deepEqual(got, ref.mask, `wasm vs float64, ${what}`);
          } else {
            for (let i = 0; i < c.g; i++) {
              mass++;
              if (!ref.rowSafe![i]) continue;
              massCompared++;
              assert.deepEqual(
                got.subarray(i * c.g, (i + 1) * c.g),
                ref.mask.subarray(i * c.g, (i + 1) * c.g),
                `wasm vs float64, ${what}, map ${x} row ${i}`,
              );
            }
          }
          for (let i = 0; i < c.g; i++) {
            assert.ok(got.subarray(i * c.g, (i + 1) * c.g).includes(1), `row ${i} empty, ${what}`);
          }
        }
        const gpu = await gpuRows(device, p, count, c.g, rowKeep, tau);
        assert.deepEqual(gpu, wasm, `GPU vs wasm, ${what}`);
      }
    }
  }
  // The near-tie exclusion (and tau = 1, where the fixed point drops entries below 2^-22) must
  // leave most rowMass rows compared.
  assert.ok(massCompared >= mass * 0.6, `rowMass compared on ${massCompared} of ${mass} rows`);
});

test("rowMass keeps the row maximum and exactly the prefix reaching tau", ["wasm"], () => {
  // Row 0: 0.5 + 0.3 = 0.8 reaches tau = 0.75 at the second entry. Row 1: a tie at the crossing
  // (0.25, 0.25) is kept whole. Row 2: tau = 0.75 is reached by the maximum alone.
  const p = new Float32Array([0.5, 0.3, 0.2, 0.5, 0.25, 0.25, 0.8, 0.1, 0.1]);
  assert.deepEqual([...selectRowMask(p, 3, { rowKeep: 3, tau: 0.75 })], [
    1,
    1,
    0,
    1,
    1,
    1,
    1,
    0,
    0,
  ]);
  // rowKeep caps: at most one entry per row (plus ties at the cap's threshold).
  assert.deepEqual([...selectRowMask(p, 3, { rowKeep: 1, tau: 0.75 })], [
    1,
    0,
    0,
    1,
    0,
    0,
    1,
    0,
    0,
  ]);
  // An all-zero row keeps everything (every entry is the maximum).
  assert.deepEqual([...selectRowMask(new Float32Array(4), 2, { rowKeep: 1, tau: 0.5 })], [
    1,
    1,
    1,
    1,
  ]);
});

test("sample table: positions inside their window, distinct, the documented pattern", [], () => {
  const geoms: RefGeometry[] = [
    {
      frames: 2,
      height: 13,
      width: 21,
      textTokens: 5,
      textPosition: "before",
      poolH: 8,
      poolW: 16,
    },
    { frames: 1, height: 3, width: 2, textTokens: 0, textPosition: "after", poolH: 8, poolW: 16 },
    { frames: 3, height: 20, width: 40, textTokens: 0, textPosition: "after", poolH: 8, poolW: 16 },
  ];
  for (const geom of geoms) {
    const plan = buildPlan(geom);
    const ord = tokenOrder(geom);
    for (const samples of [1, 3, 8, 16]) {
      const t = sampleTable(plan, samples);
      const want = sampledTokens(geom, ord, samples);
      for (let i = 0; i < plan.g; i++) {
        const n = t.table[i * (samples + 1)];
        const pos = Array.from(t.table.subarray(i * (samples + 1) + 1, i * (samples + 1) + 1 + n));
        assert.equal(n, Math.min(samples, plan.tileLen[i]));
        assert.equal(new Set(pos).size, n, "distinct");
        for (const x of pos) {
          assert.ok(x >= plan.tileStart[i] && x < plan.tileStart[i] + plan.tileLen[i]);
        }
        assert.deepEqual(pos.map((x) => plan.order[x]), want[i], `${JSON.stringify(geom)} ${i}`);
        const maxLen = Math.max(...ord.blockTokens.map((m) => m.length));
        assert.equal(t.coef[2 * i], Math.fround(plan.tileLen[i] / (maxLen * n)));
        assert.equal(t.coef[2 * i + 1], Math.fround(plan.tileLen[i] / maxLen));
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// The whole operator: every policy x estimator on both backends against float64
// ---------------------------------------------------------------------------------------------

interface OpCase {
  name: string;
  geom: RefGeometry;
  batch: number;
  heads: number;
  headDim: number;
  layout: Layout;
  dtype: DType;
  sparsity: number;
  samples: number;
  seed: number;
}

const OP_CASES: OpCase[] = [
  {
    name: "ragged, text after",
    geom: {
      frames: 3,
      height: 13,
      width: 21,
      textTokens: 5,
      textPosition: "after",
      poolH: 8,
      poolW: 16,
    },
    batch: 1,
    heads: 2,
    headDim: 32,
    layout: "BSHD",
    dtype: "f32",
    sparsity: 0.6,
    samples: 8,
    seed: 11,
  },
  {
    name: "small windows, text before, CFG batch, f16",
    geom: {
      frames: 2,
      height: 9,
      width: 10,
      textTokens: 130,
      textPosition: "before",
      poolH: 4,
      poolW: 4,
    },
    batch: 2,
    heads: 1,
    headDim: 16,
    layout: "BHSD",
    dtype: "f16",
    sparsity: 0.75,
    samples: 3,
    seed: 21,
  },
];

OP_CASES.push({
  // headDim 256 holds 8 sample rows per GPU workgroup: 16 samples take two groups.
  name: "headDim 256, 16 samples (two sample groups on the GPU)",
  geom: {
    frames: 2,
    height: 8,
    width: 9,
    textTokens: 3,
    textPosition: "after",
    poolH: 4,
    poolW: 4,
  },
  batch: 1,
  heads: 1,
  headDim: 256,
  layout: "BSHD",
  dtype: "f32",
  sparsity: 0.5,
  samples: 16,
  seed: 31,
});

const DEFAULT_MIN_WORKGROUPS = SAMPLED_TUNING.minWorkgroups;

const COMBOS: { policy: Policy; estimator: Estimator; tau?: number; budget?: "tokens" }[] = [
  { policy: "percentile", estimator: "draft" },
  { policy: "percentile", estimator: "draft", budget: "tokens" },
  { policy: "percentile", estimator: "sampled", budget: "tokens" },
  { policy: "percentile", estimator: "hybrid", budget: "tokens" },
  { policy: "rowMass", estimator: "draft", tau: 0.8, budget: "tokens" },
  { policy: "rowMass", estimator: "sampled", tau: 0.9, budget: "tokens" },
  { policy: "rowTopK", estimator: "draft" },
  { policy: "rowMass", estimator: "draft", tau: 0.8 },
  { policy: "percentile", estimator: "sampled" },
  { policy: "rowTopK", estimator: "sampled" },
  { policy: "rowMass", estimator: "sampled", tau: 0.9 },
  { policy: "percentile", estimator: "hybrid" },
  { policy: "rowTopK", estimator: "hybrid" },
  { policy: "rowMass", estimator: "hybrid", tau: 0.6 },
];

interface Prepared {
  seed: number;
  skipped: number;
  inputs: Inputs;
  dims: Dims;
  ord: TokenOrder;
  sel: RefSelection;
  ref: Float64Array;
  tol: number;
}

/** The first seed whose float64 mask clears the near-tie margins, with the reference output. */
function prepare(c: OpCase, combo: typeof COMBOS[number]): Prepared {
  const ord = tokenOrder(c.geom);
  const dims: Dims = {
    batch: c.batch,
    tokens: ord.tokens,
    heads: c.heads,
    headDim: c.headDim,
    layout: c.layout,
  };
  const scale = 1 / Math.sqrt(c.headDim);
  for (let seed = c.seed; seed < c.seed + 64; seed++) {
    const inputs = videoInputs({ geometry: c.geom, ...c, seed });
    const tokens = combo.budget === "tokens";
    const map = importanceRef(
      combo.estimator,
      inputs,
      dims,
      c.geom,
      ord,
      c.samples,
      scale,
      tokens,
    );
    const lens = tokens ? ord.blockTokens.map((b) => b.length) : undefined;
    const sel = selectRef(map, ord.g, combo.policy, c.sparsity, combo.tau ?? 0.9, lens);
    if (!(sel.valueMargin >= MASK_MARGIN && sel.massSafe)) continue;
    const keys = maskedKeys(ord, sel.mask, c.heads);
    const ref = attentionF64({ ...inputs, dims, scale, keys });
    const naive = attentionNaive({ ...inputs, dims, scale, keys, precision: c.dtype });
    return {
      seed,
      skipped: seed - c.seed,
      inputs,
      dims,
      ord,
      sel,
      ref,
      tol: tolerance(maxAbsErr(naive, ref).err, c.dtype),
    };
  }
  throw new Error(`${c.name} ${JSON.stringify(combo)}: no seed clears the near-tie margins`);
}

/**
 * The op options of one case and one policy/estimator combination (batch, layout and dtype
 * included, so the case's generated inputs always match the op).
 */
function draftOptions(c: OpCase, combo: typeof COMBOS[number]): DraftAttentionOptions {
  return {
    frames: c.geom.frames,
    height: c.geom.height,
    width: c.geom.width,
    textTokens: c.geom.textTokens,
    textPosition: c.geom.textPosition,
    pool: [c.geom.poolH, c.geom.poolW],
    batch: c.batch,
    heads: c.heads,
    headDim: c.headDim,
    layout: c.layout,
    dtype: c.dtype,
    sparsity: c.sparsity,
    policy: combo.policy,
    estimator: combo.estimator,
    ...(combo.tau ? { tau: combo.tau } : {}),
    ...(combo.estimator === "draft" ? {} : { samples: c.samples }),
    ...(combo.budget ? { budget: combo.budget } : {}),
  };
}

for (const c of OP_CASES) {
  for (const combo of COMBOS) {
    const label = `${combo.policy}/${combo.estimator}${combo.tau ? ` tau ${combo.tau}` : ""}` +
      `${combo.budget ? ` budget ${combo.budget}` : ""}, ` +
      `${c.name}: masks of wasm and webgpu equal float64, outputs within tolerance`;
    test(label, BACKENDS, async () => {
      const prep = prepare(c, combo);
      const g = prep.ord.g;
      // WebGPU three times for the sampled estimators: the tiled kernel (where the device has
      // subgroups) split for its default workgroup count (many key and tile ranges on problems
      // this small) and unsplit, then the per-key kernel at its widest grouping (several tiles
      // per workgroup).
      const runs: [Name, number, boolean][] = [
        ["wasm", 0, true],
        ["webgpu", DEFAULT_MIN_WORKGROUPS, true],
      ];
      if (combo.estimator !== "draft") runs.push(["webgpu", 0, true], ["webgpu", 0, false]);
      for (const [name, minWorkgroups, tiled] of runs) {
        SAMPLED_TUNING.minWorkgroups = minWorkgroups;
        SAMPLED_TUNING.tiled = tiled;
        const op = runtimes.get(name)!.draftAttention(draftOptions(c, combo));
        try {
          const out = await op.run(prep.inputs.q, prep.inputs.k, prep.inputs.v);
          const m = await op.lastMask();
          const what = `${name}${
            name === "webgpu" ? ` minWorkgroups ${minWorkgroups}${tiled ? "" : " per-key"}` : ""
          } (seed ${prep.seed}, ${prep.skipped} skipped for near-ties)`;
          let diff = 0;
          for (let e = 0; e < m.mask.length; e++) diff += m.mask[e] === prep.sel.mask[e] ? 0 : 1;
          assert.equal(diff, 0, `${what}: ${diff} of ${m.mask.length} mask entries differ`);
          for (let r = 0; r < m.mask.length / g; r++) {
            assert.ok(m.mask.subarray(r * g, (r + 1) * g).includes(1), `${what}: row ${r} empty`);
          }
          const { err, index } = maxAbsErr(out, prep.ref);
          assert.ok(
            err <= prep.tol,
            `${what}: output error ${err} > tol ${prep.tol} at ${index}`,
          );
        } finally {
          op.dispose();
          SAMPLED_TUNING.minWorkgroups = DEFAULT_MIN_WORKGROUPS;
          SAMPLED_TUNING.tiled = true;
        }
      }
    });
  }
}

// The tiled estimator must be what runs on a device with subgroups (llvmpipe and NVIDIA have
// them), not a silent fallback. At headDim 256 with 16 samples (16 sample slots, 16 rows per
// thread) a narrow tile (`SAMPLED_TUNING.shape`) fits llvmpipe's 32 KiB with its subgroups of 8;
// with subgroups of 32 no f32 tile fits 48 KiB, and the per-key kernel must run instead.
test("the tiled estimator runs (subgroup or workgroup reductions) and matches wasm", [
  "wasm",
  "webgpu",
], async () => {
  const device = runtimes.get("webgpu")!.device!;
  const ctx = new GpuContext(device);
  assert.ok(ctx.subgroupSize > 0, `this adapter reports no single subgroup size`);
  // [case, tile override, row groups per query tile expected on subgroups of 8]: 16 slots on
  // one thread, then a tile spanning 2 and 4 row groups of a subgroup (narrow row groups).
  const shapes: [OpCase, Partial<TiledShape> | undefined, number][] = [
    [OP_CASES[0], undefined, 1],
    [OP_CASES[2], { tn: 1 }, 1],
    [OP_CASES[2], { tn: 1, cg: 4 }, 2],
    [OP_CASES[2], { tn: 1, cg: 2, tm4: 1 }, 4],
    // Row-group reductions through workgroup memory, as on a device without subgroups.
    [OP_CASES[0], { subgroups: false }, 1],
    [OP_CASES[1], { subgroups: false, cg: 4 }, 1],
  ];
  for (const [c, shape, span] of shapes) {
    for (const combo of COMBOS.filter((x) => x.estimator !== "draft")) {
      const prep = prepare(c, combo);
      const spec = resolveDraft(draftOptions(c, combo));
      SAMPLED_TUNING.shape = shape;
      const fits = tiledShape(
        {
          subgroupSize: ctx.subgroupSize,
          limits: ctx.limits,
          f16: spec.dtype === "f16" && device.features.has("shader-f16"),
        },
        spec.headDim,
        spec.mask.samples,
      );
      const op = new WebGpuOp(ctx, spec, buildPlan(spec), () => {});
      try {
        const what = `${c.name}, ${combo.policy}/${combo.estimator} ${combo.budget ?? ""}`;
        if (c === OP_CASES[0] || ctx.subgroupSize === 8) assert.ok(fits, what);
        if (ctx.subgroupSize === 8) assert.equal(fits!.span, span, what);
        if (fits && shape?.subgroups === false) assert.equal(fits.subgroups, false, what);
        assert.equal(op.estimatorKernel, fits ? "tiled" : "rows", what);
        await op.run(prep.inputs.q, prep.inputs.k, prep.inputs.v);
        assert.deepEqual((await op.lastMask()).mask, prep.sel.mask, what);
      } finally {
        op.dispose();
        SAMPLED_TUNING.shape = undefined;
      }
    }
  }
});

// Shapes at the tiled estimator's edges: head dims whose vec4 count is odd or not a multiple of
// 4 (the S loop's unroll), one window (g = 1), fewer tokens than a key chunk, text first, sample
// counts 1, 5 (8 slots, 3 of them empty) and 4, and the split counts forced both ways.
const EDGE_CASES: OpCase[] = [
  {
    name: "headDim 20, 5 samples, text before",
    geom: {
      frames: 2,
      height: 7,
      width: 11,
      textTokens: 9,
      textPosition: "before",
      poolH: 4,
      poolW: 4,
    },
    batch: 1,
    heads: 2,
    headDim: 20,
    layout: "BSHD",
    dtype: "f32",
    sparsity: 0.6,
    samples: 5,
    seed: 41,
  },
  {
    name: "headDim 24, 1 sample, f16, BHSD",
    geom: {
      frames: 3,
      height: 5,
      width: 6,
      textTokens: 0,
      textPosition: "after",
      poolH: 2,
      poolW: 3,
    },
    batch: 2,
    heads: 1,
    headDim: 24,
    layout: "BHSD",
    dtype: "f16",
    sparsity: 0.7,
    samples: 1,
    seed: 51,
  },
  {
    name: "one window, 20 tokens, 4 samples",
    geom: {
      frames: 1,
      height: 4,
      width: 4,
      textTokens: 4,
      textPosition: "after",
      poolH: 4,
      poolW: 4,
    },
    batch: 1,
    heads: 3,
    headDim: 8,
    layout: "BSHD",
    dtype: "f32",
    sparsity: 0.5,
    samples: 4,
    seed: 61,
  },
];

test("tiled estimator at its edges (head dims, one window, short keys): wasm's masks", [
  "wasm",
  "webgpu",
], async () => {
  const ctx = new GpuContext(runtimes.get("webgpu")!.device!);
  const combos = COMBOS.filter((x) => x.estimator !== "draft" && x.policy === "percentile");
  for (const c of EDGE_CASES) {
    for (const combo of combos) {
      const prep = prepare(c, combo);
      const spec = resolveDraft(draftOptions(c, combo));
      const runs = [[0, true], [DEFAULT_MIN_WORKGROUPS, true], [DEFAULT_MIN_WORKGROUPS, false]];
      for (const [minWorkgroups, subgroups] of runs as [number, boolean][]) {
        SAMPLED_TUNING.minWorkgroups = minWorkgroups;
        SAMPLED_TUNING.shape = subgroups ? undefined : { subgroups };
        const op = new WebGpuOp(ctx, spec, buildPlan(spec), () => {});
        try {
          const what = `${c.name}, ${combo.estimator} ${combo.budget ?? ""}, minWorkgroups ` +
            `${minWorkgroups}${subgroups ? "" : " without subgroups"} (seed ${prep.seed})`;
          assert.equal(op.estimatorKernel, "tiled", what);
          await op.run(prep.inputs.q, prep.inputs.k, prep.inputs.v);
          assert.deepEqual((await op.lastMask()).mask, prep.sel.mask, what);
        } finally {
          op.dispose();
          SAMPLED_TUNING.minWorkgroups = DEFAULT_MIN_WORKGROUPS;
          SAMPLED_TUNING.shape = undefined;
        }
      }
    }
  }
});

test("WebGPU default limits (16 KiB workgroup memory): every combination, wasm's masks", [
  "wasm",
  "webgpu",
], async () => {
  const small = await openRuntime({ backend: "webgpu", limits: "default" });
  try {
    const c = OP_CASES[OP_CASES.length - 1]; // headDim 256: the largest sample rows
    for (const combo of COMBOS) {
      const prep = prepare(c, combo);
      const masks: Uint8Array[] = [];
      for (const rt of [runtimes.get("wasm")!, small]) {
        const op = rt.draftAttention(draftOptions(c, combo));
        try {
          await op.run(prep.inputs.q, prep.inputs.k, prep.inputs.v);
          masks.push((await op.lastMask()).mask);
        } finally {
          op.dispose();
        }
      }
      assert.deepEqual(masks[1], masks[0], `${combo.policy}/${combo.estimator}`);
      assert.deepEqual(masks[0], prep.sel.mask, `${combo.policy}/${combo.estimator}`);
    }
  } finally {
    small.dispose();
  }
});

// Pieces: a binding limit that splits the op (whole batch elements in BSHD, pairs of heads in
// BHSD); each piece runs its own estimator and selection, and must give the unsplit op's masks
// and outputs bit for bit, with typed arrays and with caller buffers.
for (
  const [layout, dtype, maxBytes] of [["BSHD", "f32", 40_000], ["BHSD", "f16", 13_000]] as const
) {
  test(
    `pieces: ${layout} ${dtype} split by a ${maxBytes}-byte binding limit`,
    ["webgpu"],
    async () => {
      const device = runtimes.get("webgpu")!.device!;
      const whole = new GpuContext(device);
      const split = new GpuContext(device, { maxStorageBufferBindingSize: maxBytes });
      for (const combo of COMBOS.filter((x) => x.estimator !== "draft")) {
        const spec = resolveDraft({
          frames: 2,
          height: 9,
          width: 10,
          textTokens: 5,
          pool: [4, 4],
          batch: 3,
          heads: 3,
          headDim: 16,
          layout,
          dtype,
          sparsity: 0.6,
          policy: combo.policy,
          estimator: combo.estimator,
          samples: 3,
          ...(combo.tau ? { tau: combo.tau } : {}),
          ...(combo.budget ? { budget: combo.budget } : {}),
        });
        const plan = buildPlan(spec);
        const geom: RefGeometry = { ...plan.geometry };
        const x = videoInputs({ geometry: geom, ...spec, seed: 3 });
        const a = new WebGpuOp(whole, spec, plan, () => {});
        const b = new WebGpuOp(split, spec, plan, () => {});
        try {
          assert.equal(a.pieceCount, 1);
          assert.ok(b.pieceCount >= 2, `${b.pieceCount} pieces`);
          const want = await a.run(x.q, x.k, x.v);
          const got = await b.run(x.q, x.k, x.v);
          const what = `${combo.policy}/${combo.estimator} ${combo.budget ?? ""}`;
          assert.deepEqual(got, want, what);
          const mask = (await a.lastMask()).mask;
          assert.deepEqual((await b.lastMask()).mask, mask, what);
          const U = GPUBufferUsage;
          const buf = (t?: TensorArray) => {
            const size = Math.ceil(want.byteLength / 4) * 4;
            const g = device.createBuffer({ size, usage: U.STORAGE | U.COPY_DST | U.COPY_SRC });
            if (t) {
              device.queue.writeBuffer(g, 0, t.buffer as ArrayBuffer, t.byteOffset, t.byteLength);
            }
            return g;
          };
          const bufs = { q: buf(x.q), k: buf(x.k), v: buf(x.v), out: buf() };
          await b.runBuffers(bufs);
          assert.deepEqual((await b.lastMask()).mask, mask, `${what} run(buffers)`);
          for (const g of Object.values(bufs)) {
            g.destroy();
          }
        } finally {
          a.dispose();
          b.dispose();
        }
      }
    },
  );
}

test("sparsity 0 is dense attention under every policy and estimator", BACKENDS, async () => {
  const c = OP_CASES[0];
  const ord = tokenOrder(c.geom);
  const dims: Dims = {
    batch: 1,
    tokens: ord.tokens,
    heads: c.heads,
    headDim: c.headDim,
    layout: c.layout,
  };
  const inputs = videoInputs({ geometry: c.geom, ...c, seed: 5 });
  const scale = 1 / Math.sqrt(c.headDim);
  const ref = attentionF64({ ...inputs, dims, scale });
  const tol = tolerance(
    maxAbsErr(attentionNaive({ ...inputs, dims, scale, precision: "f32" }), ref).err,
    "f32",
  );
  for (const name of BACKENDS) {
    for (const combo of COMBOS) {
      const op = runtimes.get(name)!.draftAttention({
        frames: c.geom.frames,
        height: c.geom.height,
        width: c.geom.width,
        textTokens: c.geom.textTokens,
        heads: c.heads,
        headDim: c.headDim,
        sparsity: 0,
        policy: combo.policy,
        estimator: combo.estimator,
        ...(combo.tau ? { tau: 0.5 } : {}),
        ...(combo.budget ? { budget: combo.budget } : {}),
      });
      try {
        const out = await op.run(inputs.q, inputs.k, inputs.v);
        const m = await op.lastMask();
        const what = `${name} ${combo.policy}/${combo.estimator}`;
        assert.ok(m.mask.every((x) => x === 1) && m.density === 1, `${what}: not every block`);
        const { err } = maxAbsErr(out, ref);
        assert.ok(err <= tol, `${what}: ${err} from dense > ${tol}`);
      } finally {
        op.dispose();
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Mask reuse
// ---------------------------------------------------------------------------------------------

for (const estimator of ["draft", "sampled"] as const) {
  test(
    `maskEvery 3 (${estimator}): runs 0 and 3 compute the mask, runs 1 and 2 reuse it`,
    BACKENDS,
    async () => {
      const c = OP_CASES[0];
      const ord = tokenOrder(c.geom);
      const dims: Dims = {
        batch: 1,
        tokens: ord.tokens,
        heads: c.heads,
        headDim: c.headDim,
        layout: c.layout,
      };
      const scale = 1 / Math.sqrt(c.headDim);
      // Two inputs with different reference masks, both clear of near-ties.
      const picks: { inputs: Inputs; mask: Uint8Array }[] = [];
      for (let seed = 40; picks.length < 2 && seed < 140; seed++) {
        const inputs = videoInputs({ geometry: c.geom, ...c, seed });
        const map = importanceRef(estimator, inputs, dims, c.geom, ord, 8, scale);
        const sel = selectRef(map, ord.g, "percentile", c.sparsity, 0.9);
        if (sel.valueMargin < MASK_MARGIN) continue;
        if (picks.length && picks[0].mask.every((x, e) => x === sel.mask[e])) continue;
        picks.push({ inputs, mask: sel.mask });
      }
      assert.equal(picks.length, 2);
      const [a, b] = picks;
      const expected = [a.mask, a.mask, a.mask, b.mask];
      const inputs = [a.inputs, b.inputs, b.inputs, b.inputs];
      for (const name of BACKENDS) {
        const op = runtimes.get(name)!.draftAttention({
          frames: c.geom.frames,
          height: c.geom.height,
          width: c.geom.width,
          textTokens: c.geom.textTokens,
          heads: c.heads,
          headDim: c.headDim,
          sparsity: c.sparsity,
          estimator,
          maskEvery: 3,
        });
        try {
          for (let r = 0; r < 4; r++) {
            const x = inputs[r];
            const out: TensorArray = await op.run(x.q, x.k, x.v);
            const m = await op.lastMask();
            assert.deepEqual(m.mask, expected[r], `${name} run ${r}: mask`);
            // The output is attention of this run's inputs under the (possibly reused) mask.
            const keys = maskedKeys(ord, expected[r], c.heads);
            const ref = attentionF64({ ...x, dims, scale, keys });
            const naive = attentionNaive({ ...x, dims, scale, keys, precision: "f32" });
            const tol = tolerance(maxAbsErr(naive, ref).err, "f32");
            assert.ok(maxAbsErr(out, ref).err <= tol, `${name} run ${r}: output`);
          }
        } finally {
          op.dispose();
        }
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

test("options: typed errors naming the field; resolved defaults", ["wasm"], () => {
  const rt = runtimes.get("wasm")!;
  const base = { frames: 1, height: 8, width: 16, heads: 1, headDim: 8 };
  const bad: [string, Record<string, unknown>, string, string][] = [
    ["tau 0", { policy: "rowMass", tau: 0 }, "INVALID_OPTION", "tau"],
    ["tau 1.5", { policy: "rowMass", tau: 1.5 }, "INVALID_OPTION", "tau"],
    ["tau NaN", { policy: "rowMass", tau: NaN }, "INVALID_OPTION", "tau"],
    ["tau string", { policy: "rowMass", tau: "0.9" }, "INVALID_OPTION", "tau"],
    ["tau without rowMass", { policy: "rowTopK", tau: 0.9 }, "INVALID_OPTION", "tau"],
    ["policy unknown", { policy: "rowTopP" }, "UNSUPPORTED", "policy"],
    ["estimator unknown", { estimator: "oracle" }, "UNSUPPORTED", "estimator"],
    ["estimator number", { estimator: 1 }, "INVALID_OPTION", "estimator"],
    ["samples 0", { estimator: "sampled", samples: 0 }, "INVALID_OPTION", "samples"],
    ["samples 17", { estimator: "sampled", samples: 17 }, "INVALID_OPTION", "samples"],
    ["samples 2.5", { estimator: "hybrid", samples: 2.5 }, "INVALID_OPTION", "samples"],
    ["samples with draft", { samples: 4 }, "INVALID_OPTION", "samples"],
    ["maskEvery 0", { maskEvery: 0 }, "INVALID_OPTION", "maskEvery"],
    ["maskEvery 1.5", { maskEvery: 1.5 }, "INVALID_OPTION", "maskEvery"],
    ["budget unknown", { budget: "pairs" }, "UNSUPPORTED", "budget"],
    [
      "budget tokens with rowTopK",
      { policy: "rowTopK", budget: "tokens" },
      "INVALID_OPTION",
      "budget",
    ],
    ["budget a number", { budget: 1 }, "INVALID_OPTION", "budget"],
  ];
  for (const [what, extra, code, field] of bad) {
    assert.throws(
      () => rt.draftAttention({ ...base, ...extra } as never),
      (e: unknown) => e instanceof DraftAttentionError && e.code === code && e.field === field,
      what,
    );
  }
  const op = rt.draftAttention({ ...base, sparsity: 0.75, policy: "rowMass" });
  const s = op.spec;
  assert.deepEqual(
    [s.policy, s.tau, s.estimator, s.samples, s.maskEvery, s.rowKeep, s.keep],
    ["rowMass", 0.9, "draft", 8, 1, 1, 1],
  );
  // What both backends run, resolved once with the spec: tau rounded to f32, the pair budget.
  assert.deepEqual(s.mask, {
    policy: "rowMass",
    estimator: "draft",
    keep: 1,
    rowKeep: 1,
    tau: Math.fround(0.9),
    samples: 8,
    maskEvery: 1,
    budget: "blocks",
    pairs: 4096, // ceil(0.25 * 128^2)
  });
  op.dispose();
  // At sparsity 0 every policy keeps every block: the reference policy does, whatever was asked.
  const dense = rt.draftAttention({
    ...base,
    width: 32,
    sparsity: 0,
    policy: "rowMass",
    estimator: "sampled",
    budget: "tokens",
    maskEvery: 2,
  });
  const m = dense.spec.mask;
  assert.deepEqual(
    [m.policy, m.estimator, m.keep, m.budget, m.maskEvery, dense.spec.policy],
    ["percentile", "draft", 4, "blocks", 2, "rowMass"],
  );
  dense.dispose();
});

Deno.test({
  name: "policy: dispose the runtimes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => {
    for (const rt of runtimes.values()) rt.dispose();
  },
});
