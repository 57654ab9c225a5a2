/**
 * A video-attention workload generator: q, k, v that look like the self-attention inputs of a
 * video diffusion transformer, deterministic from a seed and small enough for CI.
 *
 * The pipeline mirrors a DiT layer, in miniature:
 * 1. A moving scene is rendered procedurally (no image files) to a "VAE latent" of
 *    `LATENT_CHANNELS` channels at twice the token resolution: a textured background split by
 *    a horizon, seen through a panning camera, with a few textured objects (superellipses) that
 *    move and spin over it. Texture is value noise sampled in world or object coordinates, so it
 *    moves with the surface it belongs to. Some diffusion noise is mixed in.
 * 2. Patchify 2x2 (as Wan and HunyuanVideo do) gives per-token pixel features; a fixed seeded
 *    random projection, a tanh and a LayerNorm give the hidden state `x` (`MODEL_DIM` wide).
 *    Text tokens (if any) are seeded random prompt embeddings sharing a common direction.
 * 3. Per head, fixed seeded random projections give q, k, v. The key projection is a rotated
 *    copy of the query projection (`Wk = cos(a) Wq + sin(a) R`), so similar content attends to
 *    itself as in trained models, and a per-head bias shared by q and k carries position: under
 *    RoPE it becomes a locality kernel whose energy split over the temporal / height / width
 *    sections makes the head spatial, temporal or mixed.
 * 4. QK RMS-norm, then the `concentration`: q and k are scaled so that `q . k * scale =
 *    concentration * cos(q, k)` at the default `scale = 1/sqrt(headDim)`. Larger values give
 *    sharper attention (fewer effective keys per query).
 * 5. 3D rotary embedding on video tokens (text tokens get none, as in HunyuanVideo): headDim is
 *    split like Wan's `rope_params`: temporal `d - 4 * floor(d/6)`, height and width
 *    `2 * floor(d/6)` each, frequencies `10000^(-2i/n)` per section, interleaved pairs.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type { DType, Layout, TensorArray, TextPosition } from "./types.ts";
import { checkKeys, MAX_HEAD_DIM, positiveInt } from "./validate.ts";

/** Channels of the rendered latent (Wan's and HunyuanVideo's VAEs have 16). */
export const LATENT_CHANNELS = 16;
/** Width of the hidden state `x` the per-head projections read. */
export const MODEL_DIM = 128;
/** Patchify size: each token is a `PATCH x PATCH` patch of the latent. */
const PATCH = 2;
/** Standard deviation of the diffusion noise mixed into the latent (signal has ~unit scale). */
const LATENT_NOISE = 0.3;
/** RoPE base, as in Wan and HunyuanVideo. */
const ROPE_THETA = 10000;

/**
 * Named concentration levels (logit of a perfectly aligned q, k pair at the default scale).
 * `"moderate"` is the default; see {@linkcode DEFAULT_CONCENTRATION}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { CONCENTRATION_LEVELS, generateWorkload } from "./workload.ts";
 * assert.ok(CONCENTRATION_LEVELS.sharp > CONCENTRATION_LEVELS.flat);
 * const w = generateWorkload({
 *   frames: 1, height: 2, width: 2, heads: 1, headDim: 8, concentration: "sharp",
 * });
 * assert.equal(w.concentration, CONCENTRATION_LEVELS.sharp);
 * ```
 */
export const CONCENTRATION_LEVELS: Readonly<Record<ConcentrationLevel, number>> = Object.freeze({
  flat: 8,
  moderate: 16,
  sharp: 32,
});

/** A named concentration. */
export type ConcentrationLevel = "flat" | "moderate" | "sharp";

/**
 * The default concentration. Chosen on the oracle, not on the draft policy: at this level the
 * best possible block selection (top blocks by true block mass) keeps >= 60% of the attention
 * mass at sparsity 0.9 on the demo's default geometry (test/workload_test.ts pins it).
 */
export const DEFAULT_CONCENTRATION: number = CONCENTRATION_LEVELS.moderate;

/**
 * The demo's bundled default geometry: a scaled-down Wan-like clip whose windows are ragged like
 * Wan 480p's (20 rows = 8 + 8 + 4, 40 columns = 16 + 16 + 8 under 8 x 16 windows), g = 54.
 */
export const DEFAULT_GEOMETRY: Readonly<
  { frames: number; height: number; width: number; heads: number; headDim: number }
> = Object.freeze({ frames: 6, height: 20, width: 40, heads: 4, headDim: 64 });

/** A CI-sized geometry (`deno task demo --quick`), g = 16. */
export const QUICK_GEOMETRY: Readonly<
  { frames: number; height: number; width: number; heads: number; headDim: number }
> = Object.freeze({ frames: 4, height: 16, width: 32, heads: 2, headDim: 32 });

/**
 * The photo workload family's concentration regimes (`scene: "photo"`), named by the effective
 * keys per query they give on {@linkcode PHOTO_GEOMETRIES} (about 4,000 / 300 / 50 of 4,600-4,800
 * tokens; test/workload_test.ts pins the ranges).
 */
export const PHOTO_REGIMES: Readonly<Record<ConcentrationLevel, number>> = Object.freeze({
  flat: 3,
  moderate: 16,
  sharp: 26,
});

/**
 * The photo family's two window shapes: `even` (6 x 16 x 48, every 8 x 16 window full, g = 36)
 * and `ragged` (6 x 20 x 40, partial windows at the bottom and right edges as in Wan 480p,
 * g = 54). Four heads (one of each archetype), head dim 64.
 */
export const PHOTO_GEOMETRIES: Readonly<
  Record<
    "even" | "ragged",
    { frames: number; height: number; width: number; heads: number; headDim: number }
  >
> = Object.freeze({
  even: Object.freeze({ frames: 6, height: 16, width: 48, heads: 4, headDim: 64 }),
  ragged: Object.freeze({ frames: 6, height: 20, width: 40, heads: 4, headDim: 64 }),
});

/** Options of {@linkcode generateWorkload}. */
export interface WorkloadOptions {
  /** Latent frames after patchify. */
  frames: number;
  /** Latent rows after patchify. */
  height: number;
  /** Latent columns after patchify. */
  width: number;
  /** Attention heads, >= 1. */
  heads: number;
  /** Multiple of 4, at most 256 (it is split into RoPE sections). */
  headDim: number;
  /** Text tokens (no RoPE); default 0. */
  textTokens?: number;
  /** Default `"after"`. */
  textPosition?: TextPosition;
  /** Batch elements, each a different scene; default 1. */
  batch?: number;
  /** Default `"BSHD"`. */
  layout?: Layout;
  /** Default `"f32"`. */
  dtype?: DType;
  /** Any integer; default 1. */
  seed?: number;
  /**
   * A number > 0 or a named level (of {@linkcode PHOTO_REGIMES} with `scene: "photo"`, else of
   * {@linkcode CONCENTRATION_LEVELS}); default {@linkcode DEFAULT_CONCENTRATION}.
   */
  concentration?: number | ConcentrationLevel;
  /**
   * What is rendered: `"shapes"` (default; textured superellipses over a two-texture
   * background) or `"photo"` (photograph-like content: 1/f spectrum textures, hard-edged
   * occluding objects, a camera that pans and zooms; see {@linkcode PHOTO_REGIMES}).
   */
  scene?: SceneKind;
}

/** The scene kinds of {@linkcode generateWorkload}. */
export type SceneKind = "shapes" | "photo";

/** What {@linkcode generateWorkload} returns. */
export interface Workload {
  /** Queries, `[batch, tokens, heads, headDim]` (BSHD) or `[batch, heads, tokens, headDim]`. */
  q: TensorArray;
  /** Keys, same shape, layout and dtype as `q`. */
  k: TensorArray;
  /** Values, same shape, layout and dtype as `q`. */
  v: TensorArray;
  /** Batch elements. */
  batch: number;
  /** `frames * height * width + textTokens`. */
  tokens: number;
  /** Attention heads. */
  heads: number;
  /** Channels per head. */
  headDim: number;
  /** Memory layout of q, k, v. */
  layout: Layout;
  /** Storage type of q, k, v. */
  dtype: DType;
  /** Latent frames. */
  frames: number;
  /** Latent rows per frame. */
  height: number;
  /** Latent columns per frame. */
  width: number;
  /** Text tokens. */
  textTokens: number;
  /** Whether the text tokens come after or before the video tokens. */
  textPosition: TextPosition;
  /** The softmax scale the concentration assumes: `1/sqrt(headDim)`. */
  scale: number;
  /** The numeric concentration used. */
  concentration: number;
  /** The seed used. */
  seed: number;
  /**
   * The rendered latent, `[batch, frames, height * 2, width * 2, LATENT_CHANNELS]`, before noise:
   * for pictures of the scene.
   */
  scene: Float32Array;
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

/** A small seeded PRNG (mulberry32) with a Gaussian draw. */
class Rng {
  #s: number;
  #spare: number | undefined;

  constructor(seed: number) {
    this.#s = (seed ^ 0x9e3779b9) >>> 0;
    for (let i = 0; i < 4; i++) this.next();
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.#spare !== undefined) {
      const s = this.#spare;
      this.#spare = undefined;
      return s;
    }
    const u = 1 - this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    const a = 2 * Math.PI * this.next();
    this.#spare = r * Math.sin(a);
    return r * Math.cos(a);
  }

  /** `n` standard normal values times `scale`. */
  gaussian(n: number, scale = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * scale;
    return out;
  }

  /** A 32-bit seed for a derived stream. */
  fork(): number {
    return Math.floor(this.next() * 4294967296) >>> 0;
  }
}

/** Hash of a lattice point to [-1, 1]. */
function hash2(ix: number, iy: number, seed: number): number {
  let h = Math.imul(ix, 0x27d4eb2d) ^ Math.imul(iy, 0x165667b1) ^ seed;
  h = Math.imul(h ^ (h >>> 15), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2147483647.5 - 1;
}

/** Smooth 2D value noise in [-1, 1], lattice spacing 1. */
function valueNoise(x: number, y: number, seed: number): number {
  const x0 = Math.floor(x), y0 = Math.floor(y);
  const fx = x - x0, fy = y - y0;
  const sx = fx * fx * (3 - 2 * fx), sy = fy * fy * (3 - 2 * fy);
  const a = hash2(x0, y0, seed), b = hash2(x0 + 1, y0, seed);
  const c = hash2(x0, y0 + 1, seed), d = hash2(x0 + 1, y0 + 1, seed);
  return (a + (b - a) * sx) + ((c + (d - c) * sx) - (a + (b - a) * sx)) * sy;
}

// ---------------------------------------------------------------------------------------------
// Scene
// ---------------------------------------------------------------------------------------------

/** A texture: base colour plus octaves of value noise, each with a channel loading. */
interface Texture {
  color: Float64Array;
  /** Lattice spacing of each octave, in tokens. */
  scales: number[];
  loadings: Float64Array[];
  seeds: number[];
}

function makeTexture(rng: Rng, size: number): Texture {
  const octaves = 3;
  const scales: number[] = [];
  const loadings: Float64Array[] = [];
  const seeds: number[] = [];
  for (let o = 0; o < octaves; o++) {
    scales.push(size * rng.uniform(0.6, 1.2) / 2 ** o);
    loadings.push(rng.gaussian(LATENT_CHANNELS, 0.55 / (1 + o * 0.5)));
    seeds.push(rng.fork() | 0);
  }
  return { color: rng.gaussian(LATENT_CHANNELS, 0.8), scales, loadings, seeds };
}

/** Adds the texture value at (u, v) into `out` with weight `w`. */
function addTexture(out: Float64Array, t: Texture, u: number, v: number, w: number): void {
  for (let c = 0; c < LATENT_CHANNELS; c++) out[c] += w * t.color[c];
  for (let o = 0; o < t.scales.length; o++) {
    const n = w * valueNoise(u / t.scales[o], v / t.scales[o], t.seeds[o]);
    const l = t.loadings[o];
    for (let c = 0; c < LATENT_CHANNELS; c++) out[c] += n * l[c];
  }
}

interface SceneObject {
  cx: number;
  cy: number;
  vx: number;
  vy: number;
  rx: number;
  ry: number;
  /** Superellipse exponent: 2 is an ellipse, larger is boxier. */
  power: number;
  angle: number;
  spin: number;
  texture: Texture;
}

interface Scene {
  sky: Texture;
  ground: Texture;
  horizon: number;
  tilt: number;
  panX: number;
  panY: number;
  objects: SceneObject[];
}

function makeScene(rng: Rng, height: number, width: number): Scene {
  const size = Math.min(height, width);
  const sky = makeTexture(rng, size * 0.5);
  const ground = makeTexture(rng, size * 0.25);
  const count = 3 + Math.floor(rng.next() * 2);
  const objects: SceneObject[] = [];
  for (let i = 0; i < count; i++) {
    const r = size * rng.uniform(0.14, 0.3);
    const dir = rng.uniform(0, 2 * Math.PI);
    // Per-frame speed as a share of the frame: a few tokens per latent frame at CI sizes.
    const speed = width * rng.uniform(0.02, 0.06);
    objects.push({
      cx: rng.uniform(0.15, 0.85) * width,
      cy: rng.uniform(0.2, 0.8) * height,
      vx: speed * Math.cos(dir),
      vy: 0.5 * speed * Math.sin(dir),
      rx: r * rng.uniform(0.8, 1.6),
      ry: r * rng.uniform(0.7, 1.1),
      power: rng.uniform(2, 5),
      angle: rng.uniform(-0.5, 0.5),
      spin: rng.uniform(-0.08, 0.08),
      texture: makeTexture(rng, r * 0.6),
    });
  }
  return {
    sky,
    ground,
    horizon: height * rng.uniform(0.35, 0.6),
    tilt: rng.uniform(-0.15, 0.15),
    panX: width * rng.uniform(0.015, 0.035) * (rng.next() < 0.5 ? -1 : 1),
    panY: height * rng.uniform(-0.01, 0.01),
    objects,
  };
}

/**
 * Renders one batch element's latent, `[frames, height*PATCH, width*PATCH, C]`, into `out` at
 * `offset`. Coordinates are in token units; sub-pixel centres at `(p + 0.5) / PATCH`.
 */
function renderScene(
  s: Scene,
  frames: number,
  height: number,
  width: number,
  out: Float32Array,
  offset: number,
): void {
  const ph = height * PATCH, pw = width * PATCH;
  const px = new Float64Array(LATENT_CHANNELS);
  const obj = new Float64Array(LATENT_CHANNELS);
  for (let f = 0; f < frames; f++) {
    for (let yi = 0; yi < ph; yi++) {
      for (let xi = 0; xi < pw; xi++) {
        const x = (xi + 0.5) / PATCH, y = (yi + 0.5) / PATCH;
        // Background in world coordinates: the camera pans by (panX, panY) per frame.
        const wx = x + s.panX * f, wy = y + s.panY * f;
        px.fill(0);
        const edge = wy - (s.horizon + s.tilt * (wx - width / 2));
        const wSky = 1 / (1 + Math.exp(edge * 2));
        addTexture(px, s.sky, wx, wy, wSky);
        addTexture(px, s.ground, wx, wy, 1 - wSky);
        for (const o of s.objects) {
          const dx = x - (o.cx + o.vx * f), dy = y - (o.cy + o.vy * f);
          const a = o.angle + o.spin * f;
          const ca = Math.cos(a), sa = Math.sin(a);
          const lu = ca * dx + sa * dy, lv = -sa * dx + ca * dy;
          const r = (Math.abs(lu / o.rx) ** o.power + Math.abs(lv / o.ry) ** o.power) **
            (1 / o.power);
          if (r >= 1.15) continue;
          // Soft edge, a few sub-pixels wide, so motion changes coverage smoothly.
          const alpha = Math.min(1, Math.max(0, (1.15 - r) / 0.3));
          obj.fill(0);
          addTexture(obj, o.texture, lu, lv, 1);
          for (let c = 0; c < LATENT_CHANNELS; c++) px[c] = px[c] * (1 - alpha) + obj[c] * alpha;
        }
        const base = offset + ((f * ph + yi) * pw + xi) * LATENT_CHANNELS;
        for (let c = 0; c < LATENT_CHANNELS; c++) out[base + c] = px[c];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Photograph-like scene
// ---------------------------------------------------------------------------------------------

/**
 * A 1/f texture: a sum of plane waves whose frequencies are log-uniform between `1 / size` and
 * about 1 cycle per token, amplitude `(k0 / k)^beta` (the power spectrum of photographs falls
 * like `1/f^2`; `beta` near 1 is a natural image, smaller is busier), each wave with its own
 * channel loading, so colour varies across the texture as it does in a photograph.
 */
interface Spectrum {
  kx: Float64Array;
  ky: Float64Array;
  phase: Float64Array;
  amp: Float64Array;
  /** `[waves * LATENT_CHANNELS]`. */
  load: Float64Array;
  color: Float64Array;
}

/** Waves per texture. */
const WAVES = 40;

function makeSpectrum(rng: Rng, size: number, beta: number, contrast: number): Spectrum {
  const kx = new Float64Array(WAVES), ky = new Float64Array(WAVES);
  const phase = new Float64Array(WAVES), amp = new Float64Array(WAVES);
  const k0 = 1 / size, k1 = 1;
  let norm = 0;
  for (let w = 0; w < WAVES; w++) {
    const k = k0 * (k1 / k0) ** rng.next();
    const a = rng.uniform(0, Math.PI);
    kx[w] = k * Math.cos(a);
    ky[w] = k * Math.sin(a);
    phase[w] = rng.uniform(0, 2 * Math.PI);
    amp[w] = (k0 / k) ** beta;
    norm += amp[w] * amp[w] / 2;
  }
  // Unit total variance per channel loading, times the contrast.
  const f = contrast / Math.sqrt(norm);
  for (let w = 0; w < WAVES; w++) amp[w] *= f;
  const load = rng.gaussian(WAVES * LATENT_CHANNELS, 1 / Math.sqrt(LATENT_CHANNELS) * 2);
  return { kx, ky, phase, amp, load, color: rng.gaussian(LATENT_CHANNELS, 0.8) };
}

/**
 * Adds the texture at world point (u, v) into `out` times `w`; waves finer than the screen can
 * show at `zoom` (world units per screen token = 1 / zoom) fade out instead of aliasing.
 */
function addSpectrum(out: Float64Array, t: Spectrum, u: number, v: number, zoom: number, w = 1) {
  for (let c = 0; c < LATENT_CHANNELS; c++) out[c] += w * t.color[c];
  for (let i = 0; i < WAVES; i++) {
    const ks = Math.hypot(t.kx[i], t.ky[i]) / zoom; // cycles per screen token
    const fade = Math.exp(-((ks / 0.6) ** 2));
    if (fade < 1e-3) continue;
    const a = w * fade * t.amp[i] *
      Math.sin(2 * Math.PI * (t.kx[i] * u + t.ky[i] * v) + t.phase[i]);
    const o = i * LATENT_CHANNELS;
    for (let c = 0; c < LATENT_CHANNELS; c++) out[c] += a * t.load[o + c];
  }
}

/** An occluding object: a polygon with a texture in its own coordinates, hard edges. */
interface PhotoObject {
  cx: number;
  cy: number;
  vx: number;
  vy: number;
  /** Polygon vertices relative to the centre, counter-clockwise. */
  px: Float64Array;
  py: Float64Array;
  texture: Spectrum;
}

interface Photo {
  layers: Spectrum[];
  /** Boundaries between background layers: y = base + slope x + a wavy 1/f profile. */
  bounds: { base: number; slope: number; profile: Spectrum }[];
  objects: PhotoObject[];
  /** Camera centre at frame 0, its pan per frame, zoom at frame 0 and its growth per frame. */
  cx: number;
  cy: number;
  panX: number;
  panY: number;
  zoom0: number;
  zoomRate: number;
}

function makePhoto(rng: Rng, height: number, width: number): Photo {
  const size = Math.max(height, width);
  const nLayers = 3;
  const layers: Spectrum[] = [];
  const bounds: Photo["bounds"] = [];
  for (let l = 0; l < nLayers; l++) {
    layers.push(makeSpectrum(rng, size * rng.uniform(0.3, 1), rng.uniform(0.7, 1.2), 1));
  }
  for (let l = 1; l < nLayers; l++) {
    bounds.push({
      base: height * (l / nLayers + rng.uniform(-0.1, 0.1)),
      slope: rng.uniform(-0.25, 0.25),
      profile: makeSpectrum(rng, size * 0.5, 1, height * 0.06),
    });
  }
  const objects: PhotoObject[] = [];
  const count = 4 + Math.floor(rng.next() * 4);
  for (let i = 0; i < count; i++) {
    const r = Math.min(height, width) * rng.uniform(0.08, 0.3);
    const n = 3 + Math.floor(rng.next() * 5);
    const px = new Float64Array(n), py = new Float64Array(n);
    const a0 = rng.uniform(0, 2 * Math.PI);
    for (let v = 0; v < n; v++) {
      const a = a0 + (2 * Math.PI * (v + rng.uniform(-0.3, 0.3))) / n;
      const rr = r * rng.uniform(0.6, 1.3);
      px[v] = rr * Math.cos(a);
      py[v] = rr * Math.sin(a);
    }
    const speed = width * rng.uniform(0, 0.04);
    const dir = rng.uniform(0, 2 * Math.PI);
    objects.push({
      cx: rng.uniform(0.05, 0.95) * width,
      cy: rng.uniform(0.1, 0.9) * height,
      vx: speed * Math.cos(dir),
      vy: 0.4 * speed * Math.sin(dir),
      px,
      py,
      texture: makeSpectrum(rng, r, rng.uniform(0.6, 1.2), 0.8),
    });
  }
  return {
    layers,
    bounds,
    objects,
    cx: width / 2,
    cy: height / 2,
    panX: width * rng.uniform(0.01, 0.05) * (rng.next() < 0.5 ? -1 : 1),
    panY: height * rng.uniform(-0.02, 0.02),
    zoom0: rng.uniform(0.9, 1.1),
    zoomRate: rng.uniform(0.02, 0.06) * (rng.next() < 0.5 ? -1 : 1),
  };
}

/** Whether (x, y) is inside the polygon (even-odd rule). */
function insidePolygon(px: Float64Array, py: Float64Array, x: number, y: number): boolean {
  let inside = false;
  for (let a = 0, b = px.length - 1; a < px.length; b = a++) {
    if ((py[a] > y) !== (py[b] > y)) {
      const xc = px[a] + ((y - py[a]) * (px[b] - px[a])) / (py[b] - py[a]);
      if (x < xc) inside = !inside;
    }
  }
  return inside;
}

/** Renders a {@linkcode Photo} like {@linkcode renderScene}: world seen through a moving camera. */
function renderPhoto(
  s: Photo,
  frames: number,
  height: number,
  width: number,
  out: Float32Array,
  offset: number,
): void {
  const ph = height * PATCH, pw = width * PATCH;
  const px = new Float64Array(LATENT_CHANNELS);
  const tmp = new Float64Array(LATENT_CHANNELS);
  for (let f = 0; f < frames; f++) {
    const zoom = s.zoom0 * Math.exp(s.zoomRate * f);
    const camX = s.cx + s.panX * f, camY = s.cy + s.panY * f;
    for (let yi = 0; yi < ph; yi++) {
      for (let xi = 0; xi < pw; xi++) {
        const x = (xi + 0.5) / PATCH, y = (yi + 0.5) / PATCH;
        const wx = camX + (x - width / 2) / zoom, wy = camY + (y - height / 2) / zoom;
        // Background layer: the first boundary below the point decides (hard edges).
        let layer = 0;
        for (let l = 0; l < s.bounds.length; l++) {
          const b = s.bounds[l];
          tmp.fill(0);
          addSpectrum(tmp, b.profile, wx, 0, zoom);
          if (wy > b.base + b.slope * (wx - width / 2) + tmp[0]) layer = l + 1;
        }
        px.fill(0);
        addSpectrum(px, s.layers[layer], wx, wy, zoom);
        for (const o of s.objects) {
          const lu = wx - (o.cx + o.vx * f), lv = wy - (o.cy + o.vy * f);
          if (!insidePolygon(o.px, o.py, lu, lv)) continue;
          px.fill(0);
          addSpectrum(px, o.texture, lu, lv, zoom);
        }
        const base = offset + ((f * ph + yi) * pw + xi) * LATENT_CHANNELS;
        for (let c = 0; c < LATENT_CHANNELS; c++) out[base + c] = px[c];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Projections
// ---------------------------------------------------------------------------------------------

/** `y[r] = sum_c m[r*cols + c] * x[c]`. */
function matvec(m: Float64Array, x: Float64Array, rows: number, cols: number, y: Float64Array) {
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += m[o + c] * x[c];
    y[r] = s;
  }
}

/** LayerNorm without affine parameters, in place: zero mean, unit variance. */
function layerNorm(x: Float64Array): void {
  let mean = 0;
  for (let i = 0; i < x.length; i++) mean += x[i];
  mean /= x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += (x[i] - mean) ** 2;
  const inv = 1 / Math.sqrt(v / x.length + 1e-6);
  for (let i = 0; i < x.length; i++) x[i] = (x[i] - mean) * inv;
}

/** RMS norm without gain, then times `gain`, in place. */
function rmsNorm(x: Float64Array, gain: number): void {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  const inv = gain / Math.sqrt(s / x.length + 1e-6);
  for (let i = 0; i < x.length; i++) x[i] *= inv;
}

/** RoPE section sizes `[temporal, height, width]` of a head dim, as Wan splits it. */
export function ropeSections(headDim: number): [number, number, number] {
  const s = Math.floor(headDim / 6);
  return [headDim - 4 * s, 2 * s, 2 * s];
}

/** Per-pair angular frequencies of the three sections, concatenated (`headDim / 2` values). */
function ropeFrequencies(headDim: number): { freq: Float64Array; axis: Int32Array } {
  const freq = new Float64Array(headDim / 2);
  const axis = new Int32Array(headDim / 2);
  let p = 0;
  ropeSections(headDim).forEach((n, a) => {
    for (let i = 0; i < n / 2; i++, p++) {
      freq[p] = ROPE_THETA ** (-(2 * i) / n);
      axis[p] = a;
    }
  });
  return { freq, axis };
}

/** Rotates interleaved pairs `(x[2p], x[2p+1])` by `freq[p] * pos[axis[p]]`, in place. */
function applyRope(
  x: Float64Array,
  rope: { freq: Float64Array; axis: Int32Array },
  pos: readonly number[],
): void {
  for (let p = 0; p < rope.freq.length; p++) {
    const a = rope.freq[p] * pos[rope.axis[p]];
    const c = Math.cos(a), s = Math.sin(a);
    const x0 = x[2 * p], x1 = x[2 * p + 1];
    x[2 * p] = x0 * c - x1 * s;
    x[2 * p + 1] = x0 * s + x1 * c;
  }
}

interface HeadWeights {
  wq: Float64Array;
  wk: Float64Array;
  wv: Float64Array;
  /** Positional bias shared by q and k (pre-norm). */
  bias: Float64Array;
}

/**
 * Head archetypes, cycled over the heads: how the positional bias splits its energy over the
 * temporal / height / width RoPE sections, and how strong it is next to content. Video DiTs
 * show all four kinds (Sparse VideoGen calls the middle two "spatial" and "temporal" heads).
 * - local: peaked in time and space (a 3D neighbourhood);
 * - spatial: peaked in time only, so the head reads its own frame, weighted by content;
 * - temporal: peaked in space only, so the head reads the same place in every frame;
 * - content: a weak bias, so content similarity (same object, same surface) decides.
 */
const ARCHETYPES: readonly {
  name: string;
  sections: [number, number, number];
  strength: number;
}[] = [
  { name: "local", sections: [1, 1, 1], strength: 1 },
  { name: "spatial", sections: [1.5, 0.25, 0.25], strength: 1 },
  { name: "temporal", sections: [0.15, 1.2, 1.2], strength: 1 },
  { name: "content", sections: [1, 1, 1], strength: 0.3 },
];

/** The archetype of head `h` (they cycle: local, spatial, temporal, content, local, ...). */
export function headArchetype(h: number): string {
  return ARCHETYPES[h % ARCHETYPES.length].name;
}

function makeHead(rng: Rng, headDim: number, h: number): HeadWeights {
  const n = headDim * MODEL_DIM;
  const sd = 1 / Math.sqrt(MODEL_DIM);
  const wq = rng.gaussian(n, sd);
  const r = rng.gaussian(n, sd);
  // Angle between the query and key maps: small = "match similar content".
  const a = rng.uniform(0.25, 0.8);
  const wk = new Float64Array(n);
  for (let i = 0; i < n; i++) wk[i] = Math.cos(a) * wq[i] + Math.sin(a) * r[i];
  const wv = rng.gaussian(n, sd);
  // Positional bias: its energy per RoPE section decides whether the head is local in time,
  // in space or both. Low-frequency pairs dominate (as in trained models), which keeps the
  // kernel smooth instead of aliasing.
  const arch = ARCHETYPES[h % ARCHETYPES.length];
  const bias = new Float64Array(headDim);
  const sections = ropeSections(headDim);
  const strength = arch.strength * rng.uniform(0.8, 1.25);
  let p = 0;
  sections.forEach((len, axis) => {
    const weight = arch.sections[axis] * rng.uniform(0.8, 1.25);
    for (let i = 0; i < len / 2; i++, p++) {
      const decay = Math.exp(-i / Math.max(1, len / 6));
      const ang = rng.uniform(0, 2 * Math.PI);
      bias[2 * p] = weight * decay * Math.cos(ang);
      bias[2 * p + 1] = weight * decay * Math.sin(ang);
    }
  });
  // Normalise the bias to a norm of sqrt(headDim) * strength (content has about sqrt(headDim)).
  let s = 0;
  for (let i = 0; i < headDim; i++) s += bias[i] * bias[i];
  const k = strength * Math.sqrt(headDim / Math.max(s, 1e-12));
  for (let i = 0; i < headDim; i++) bias[i] *= k;
  return { wq, wk, wv, bias };
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

function invalid(field: string, detail: string): never {
  throw new DraftAttentionError("INVALID_OPTION", field, detail);
}

/** Resolves a concentration option (number or level name) to a number. */
export function resolveConcentration(value: unknown): number {
  if (value === undefined) return DEFAULT_CONCENTRATION;
  if (typeof value === "string") {
    if (Object.hasOwn(CONCENTRATION_LEVELS, value)) {
      return CONCENTRATION_LEVELS[value as ConcentrationLevel];
    }
    const n = Number(value);
    if (value.trim() !== "" && Number.isFinite(n) && n > 0) return n;
  }
  if (typeof value === "number" && Number.isFinite(value) && value > 0) return value;
  return invalid(
    "concentration",
    `must be a number > 0 or one of ${
      Object.keys(CONCENTRATION_LEVELS).map((k) => JSON.stringify(k)).join(", ")
    }, got ${describeValue(value)}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/**
 * Generates q, k, v of a video-like attention layer, deterministic from `seed`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { generateWorkload } from "./workload.ts";
 * const w = generateWorkload({ frames: 2, height: 8, width: 16, heads: 2, headDim: 32, seed: 3 });
 * assert.ok(w.q.length === 2 * 8 * 16 * 2 * 32 && w.tokens === 256);
 * const again = generateWorkload({ frames: 2, height: 8, width: 16, heads: 2, headDim: 32, seed: 3 });
 * assert.ok(again.q.every((x, i) => x === w.q[i]));
 * ```
 */
export function generateWorkload(options: WorkloadOptions): Workload {
  if (typeof options !== "object" || options === null) {
    invalid("options", `must be an object, got ${describeValue(options)}`);
  }
  checkKeys("generateWorkload", options);
  const frames = positiveInt("frames", options.frames);
  const height = positiveInt("height", options.height);
  const width = positiveInt("width", options.width);
  const heads = positiveInt("heads", options.heads);
  const headDim = positiveInt("headDim", options.headDim);
  if (headDim % 4 !== 0 || headDim > MAX_HEAD_DIM) {
    throw new DraftAttentionError(
      "UNSUPPORTED",
      "headDim",
      `must be a multiple of 4 up to ${MAX_HEAD_DIM}, got ${headDim}`,
    );
  }
  const textTokens = options.textTokens === undefined
    ? 0
    : positiveInt("textTokens", options.textTokens, 0);
  const textPosition = options.textPosition ?? "after";
  if (textPosition !== "after" && textPosition !== "before") {
    invalid("textPosition", `must be "after" or "before", got ${describeValue(textPosition)}`);
  }
  const batch = options.batch === undefined ? 1 : positiveInt("batch", options.batch);
  const layout = options.layout ?? "BSHD";
  if (layout !== "BSHD" && layout !== "BHSD") {
    invalid("layout", `must be "BSHD" or "BHSD", got ${describeValue(layout)}`);
  }
  const dtype = options.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16") {
    invalid("dtype", `must be "f32" or "f16", got ${describeValue(dtype)}`);
  }
  const seed = options.seed ?? 1;
  if (typeof seed !== "number" || !Number.isSafeInteger(seed)) {
    invalid("seed", `must be an integer, got ${describeValue(seed)}`);
  }
  const sceneKind = options.scene ?? "shapes";
  if (sceneKind !== "shapes" && sceneKind !== "photo") {
    invalid("scene", `must be "shapes" or "photo", got ${describeValue(sceneKind)}`);
  }
  // A named level means the photo family's regime on the photo scene.
  const named = options.concentration;
  const concentration = sceneKind === "photo" && typeof named === "string" &&
      Object.hasOwn(PHOTO_REGIMES, named)
    ? PHOTO_REGIMES[named as ConcentrationLevel]
    : resolveConcentration(named);
  const videoTokens = frames * height * width;
  const tokens = videoTokens + textTokens;
  const total = batch * tokens * heads * headDim;
  if (total > 2 ** 28) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "frames",
      `batch * tokens * heads * headDim = ${total}; the generator stops at ${2 ** 28}`,
    );
  }

  // Weights come from one stream (the "model"), scenes from per-batch streams: the same seed
  // gives the same model whatever the batch size.
  const model = new Rng(seed);
  const feat = LATENT_CHANNELS * PATCH * PATCH;
  const embed = model.gaussian(MODEL_DIM * feat, 1.6 / Math.sqrt(feat));
  const embedBias = model.gaussian(MODEL_DIM, 0.3);
  const headsW: HeadWeights[] = [];
  for (let h = 0; h < heads; h++) headsW.push(makeHead(model, headDim, h));
  const textMean = model.gaussian(MODEL_DIM, 1);
  const rope = ropeFrequencies(headDim);
  // q . k * (1/sqrt(d)) = concentration * cos(q, k) when |q| = |k| = sqrt(d) * gain.
  const gain = Math.sqrt(concentration / Math.sqrt(headDim));

  const ph = height * PATCH, pw = width * PATCH;
  const sceneLen = frames * ph * pw * LATENT_CHANNELS;
  const scene = new Float32Array(batch * sceneLen);
  const Arr = dtype === "f16" ? Float16Array : Float32Array;
  const q = new Arr(total), k = new Arr(total), v = new Arr(total);
  const sT = layout === "BSHD" ? heads * headDim : headDim;
  const sH = layout === "BSHD" ? headDim : tokens * headDim;
  const sB = tokens * heads * headDim;
  const textOffset = textPosition === "before" ? 0 : videoTokens;
  const videoOffset = textPosition === "before" ? textTokens : 0;

  const patch = new Float64Array(feat);
  const x = new Float64Array(MODEL_DIM);
  const qh = new Float64Array(headDim), kh = new Float64Array(headDim);
  const vh = new Float64Array(headDim);

  const writeToken = (b: number, t: number, pos: readonly number[] | null) => {
    for (let h = 0; h < heads; h++) {
      const w = headsW[h];
      matvec(w.wq, x, headDim, MODEL_DIM, qh);
      matvec(w.wk, x, headDim, MODEL_DIM, kh);
      matvec(w.wv, x, headDim, MODEL_DIM, vh);
      for (let d = 0; d < headDim; d++) {
        qh[d] += w.bias[d];
        kh[d] += w.bias[d];
      }
      rmsNorm(qh, gain);
      rmsNorm(kh, gain);
      if (pos) {
        applyRope(qh, rope, pos);
        applyRope(kh, rope, pos);
      }
      const o = b * sB + t * sT + h * sH;
      for (let d = 0; d < headDim; d++) {
        q[o + d] = qh[d];
        k[o + d] = kh[d];
        v[o + d] = vh[d];
      }
    }
  };

  for (let b = 0; b < batch; b++) {
    const rng = new Rng(seed * 7919 + 104729 * (b + 1));
    if (sceneKind === "photo") {
      renderPhoto(makePhoto(rng, height, width), frames, height, width, scene, b * sceneLen);
    } else {
      renderScene(makeScene(rng, height, width), frames, height, width, scene, b * sceneLen);
    }
    const noise = new Rng(rng.fork());
    for (let f = 0; f < frames; f++) {
      for (let r = 0; r < height; r++) {
        for (let c = 0; c < width; c++) {
          let i = 0;
          for (let dy = 0; dy < PATCH; dy++) {
            for (let dx = 0; dx < PATCH; dx++) {
              const base = b * sceneLen +
                ((f * ph + r * PATCH + dy) * pw + c * PATCH + dx) * LATENT_CHANNELS;
              for (let ch = 0; ch < LATENT_CHANNELS; ch++) {
                patch[i++] = scene[base + ch] + LATENT_NOISE * noise.normal();
              }
            }
          }
          matvec(embed, patch, MODEL_DIM, feat, x);
          for (let j = 0; j < MODEL_DIM; j++) x[j] = Math.tanh(x[j] + embedBias[j]);
          layerNorm(x);
          writeToken(b, videoOffset + (f * height + r) * width + c, [f, r, c]);
        }
      }
    }
    for (let t = 0; t < textTokens; t++) {
      for (let j = 0; j < MODEL_DIM; j++) x[j] = textMean[j] + 0.8 * noise.normal();
      layerNorm(x);
      writeToken(b, textOffset + t, null);
    }
  }

  return {
    q,
    k,
    v,
    batch,
    tokens,
    heads,
    headDim,
    layout,
    dtype,
    frames,
    height,
    width,
    textTokens,
    textPosition,
    scale: 1 / Math.sqrt(headDim),
    concentration,
    seed,
    scene,
  };
}
