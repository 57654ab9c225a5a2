/**
 * Which (denoising step, layer) pairs run dense attention and which run draft attention.
 *
 * The reference keeps attention dense while the video is mostly noise (timestep above ~925-945
 * of 1000, about the first 30% of 50 steps), in the first transformer block(s), and always for
 * cross-attention; everything else runs sparse.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import { checkKeys, positiveInt } from "./validate.ts";

/** Options of {@linkcode createStepSchedule}; model profiles carry their own defaults. */
export interface StepScheduleOptions {
  /** Denoising steps of the sampler; default 50. */
  steps?: number;
  /** Share of the first steps run dense, in [0, 1]; default 0.3 (15 of 50 steps). */
  denseStepFraction?: number;
  /** The first this many transformer layers are always dense; default 1. */
  denseLayers?: number;
  /**
   * When set, a step whose timestep (0..1000, counting down) is above this is dense, in place
   * of `denseStepFraction`; e.g. 925.
   */
  denseAboveTimestep?: number;
}

/** Where a call of the operator sits in the sampler. */
export interface StepQuery {
  /** 0-based denoising step. */
  step: number;
  /** 0-based transformer layer. */
  layer: number;
  /** The sampler's timestep for this step (needed with `denseAboveTimestep`). */
  timestep?: number;
  /** Cross-attention is always dense. */
  cross?: boolean;
}

/** Answers "dense or sparse" per (step, layer). */
export interface StepSchedule {
  /** Denoising steps of the sampler. */
  readonly steps: number;
  /** Leading steps run dense: `round(denseStepFraction * steps)` (unused with a timestep rule). */
  readonly denseSteps: number;
  /** Leading transformer layers always run dense. */
  readonly denseLayers: number;
  /** `"dense"` or `"sparse"` for one call of the operator. */
  mode(query: StepQuery): "dense" | "sparse";
}

function fraction(field: string, value: unknown): number {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be a number in [0, 1], got ${describeValue(value)}`,
    );
  }
  return value;
}

/**
 * Builds the dense/sparse schedule.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createStepSchedule } from "./schedule.ts";
 * const s = createStepSchedule({ steps: 50 });
 * assert.equal(s.mode({ step: 0, layer: 5 }), "dense");
 * assert.equal(s.mode({ step: 20, layer: 0 }), "dense");
 * assert.equal(s.mode({ step: 20, layer: 5 }), "sparse");
 * assert.equal(s.mode({ step: 20, layer: 5, cross: true }), "dense");
 * ```
 */
export function createStepSchedule(options: StepScheduleOptions = {}): StepSchedule {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "options",
      `must be an object, got ${describeValue(options)}`,
    );
  }
  checkKeys("createStepSchedule", options);
  const steps = positiveInt("steps", options.steps ?? 50);
  const denseLayers = positiveInt("denseLayers", options.denseLayers ?? 1, 0);
  const frac = fraction("denseStepFraction", options.denseStepFraction ?? 0.3);
  const denseSteps = Math.round(frac * steps);
  const above = options.denseAboveTimestep;
  if (above !== undefined && (typeof above !== "number" || !Number.isFinite(above))) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "denseAboveTimestep",
      `must be a finite number, got ${describeValue(above)}`,
    );
  }
  return {
    steps,
    denseSteps,
    denseLayers,
    mode(query: StepQuery): "dense" | "sparse" {
      if (typeof query !== "object" || query === null) {
        throw new DraftAttentionError(
          "INVALID_OPTION",
          "query",
          `must be an object, got ${describeValue(query)}`,
        );
      }
      checkKeys("mode", query);
      const step = positiveInt("step", query.step, 0, steps - 1);
      const layer = positiveInt("layer", query.layer, 0);
      if (query.cross || layer < denseLayers) return "dense";
      if (above !== undefined) {
        const t = query.timestep;
        if (typeof t !== "number" || !Number.isFinite(t)) {
          throw new DraftAttentionError(
            "INVALID_OPTION",
            "timestep",
            `is needed with denseAboveTimestep, got ${describeValue(t)}`,
          );
        }
        return t > above ? "dense" : "sparse";
      }
      return step < denseSteps ? "dense" : "sparse";
    },
  };
}
