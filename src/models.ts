/**
 * Profiles of real video models (`models/*.json`): latent grid after patchify, text tokens,
 * heads, headDim, layers and the draft-attention defaults. Usable by name in
 * `runtime.draftAttention({ model: "wan2.1-t2v-1.3b-480p" })`; explicit fields override.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import m0 from "../models/cogvideox-5b.json" with { type: "json" };
import m1 from "../models/hunyuanvideo-720p.json" with { type: "json" };
import m2 from "../models/hunyuanvideo-768p.json" with { type: "json" };
import m3 from "../models/ltx-video.json" with { type: "json" };
import m4 from "../models/mochi-1.json" with { type: "json" };
import m5 from "../models/wan2.1-paper-512p.json" with { type: "json" };
import m6 from "../models/wan2.1-t2v-1.3b-480p.json" with { type: "json" };
import m7 from "../models/wan2.1-t2v-14b-720p.json" with { type: "json" };

/** One model's geometry and defaults. */
export interface ModelProfile {
  /** Name used in `{ model: name }`. */
  name: string;
  /** Model and resolution, e.g. "Wan2.1 T2V 1.3B 480x832x81". */
  title: string;
  /** Latent frames after patchify. */
  frames: number;
  /** Latent rows per frame after patchify. */
  height: number;
  /** Latent columns per frame after patchify. */
  width: number;
  /** Text tokens in the joint sequence (0 when text enters by cross-attention only). */
  textTokens: number;
  /** Whether the text tokens come after or before the video tokens. */
  textPosition: "after" | "before";
  /** Attention heads. */
  heads: number;
  /** Channels per head. */
  headDim: number;
  /** Transformer blocks with self-attention. */
  layers: number;
  /** Draft window `[poolH, poolW]` in latent tokens. */
  pool: [number, number];
  /** Default share of video-video block pairs dropped, in `[0, 1)`. */
  sparsity: number;
  /** Share of the first denoising steps run dense (see `createStepSchedule`). */
  denseStepFraction: number;
  /** First transformer blocks run dense. */
  denseLayers: number;
}

const INT_FIELDS = ["frames", "height", "width", "heads", "headDim", "layers"] as const;

/** Checks one profile against the schema; throws naming the field. */
export function checkProfile(p: unknown): ModelProfile {
  const o = p as Record<string, unknown>;
  const bad = (field: string, want: string): never => {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      `model.${field}`,
      `must be ${want}, got ${describeValue(o?.[field])}`,
    );
  };
  if (typeof o !== "object" || o === null) bad("name", "an object");
  if (typeof o.name !== "string" || !/^[a-z0-9.-]+$/.test(o.name)) bad("name", "a slug");
  if (typeof o.title !== "string") bad("title", "a string");
  for (const f of INT_FIELDS) {
    if (!Number.isInteger(o[f]) || (o[f] as number) < 1) bad(f, "a positive integer");
  }
  if (!Number.isInteger(o.textTokens) || (o.textTokens as number) < 0) {
    bad("textTokens", "an integer >= 0");
  }
  if (o.textPosition !== "after" && o.textPosition !== "before") {
    bad("textPosition", `"after" or "before"`);
  }
  const pool = o.pool as unknown[];
  if (!Array.isArray(pool) || pool.length !== 2 || !pool.every((x) => Number.isInteger(x))) {
    bad("pool", "[poolH, poolW]");
  }
  if (typeof o.sparsity !== "number" || !(o.sparsity >= 0 && o.sparsity < 1)) {
    bad("sparsity", "in [0, 1)");
  }
  const frac = o.denseStepFraction;
  if (typeof frac !== "number" || !(frac >= 0 && frac <= 1)) bad("denseStepFraction", "in [0, 1]");
  if (!Number.isInteger(o.denseLayers) || (o.denseLayers as number) < 0) {
    bad("denseLayers", "an integer >= 0");
  }
  const known = new Set<string>([
    ...INT_FIELDS,
    "name",
    "title",
    "textTokens",
    "textPosition",
    "pool",
    "sparsity",
    "denseStepFraction",
    "denseLayers",
  ]);
  for (const key of Object.keys(o)) if (!known.has(key)) bad(key, "a known field");
  return o as unknown as ModelProfile;
}

/**
 * Every bundled profile by name (frozen).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MODELS } from "./models.ts";
 * const names = Object.keys(MODELS);
 * assert.ok(names.includes("wan2.1-t2v-1.3b-480p"));
 * assert.ok(Object.values(MODELS).every((m) => m.headDim % 4 === 0));
 * ```
 */
export const MODELS: Readonly<Record<string, ModelProfile>> = Object.freeze(
  Object.fromEntries(
    [m0, m1, m2, m3, m4, m5, m6, m7].map((m) => {
      const p = checkProfile(m);
      return [p.name, p];
    }),
  ),
);

/**
 * The profile of a bundled model.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { getModel } from "./models.ts";
 * assert.equal(getModel("wan2.1-t2v-1.3b-480p").frames, 21);
 * ```
 */
export function getModel(name: string): ModelProfile {
  const p = typeof name === "string" && Object.hasOwn(MODELS, name) ? MODELS[name] : undefined;
  if (!p) {
    throw new DraftAttentionError(
      "UNKNOWN_MODEL",
      "model",
      `${describeValue(name)} is not a bundled profile; known: ${Object.keys(MODELS).join(", ")}`,
    );
  }
  return p;
}
