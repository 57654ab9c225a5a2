/**
 * Splitting an op into pieces that each fit one storage-buffer binding. A piece is a run of
 * consecutive (batch, head) pairs whose q/k/v/out elements form one contiguous range: whole
 * batch elements in BSHD (heads are interleaved along the tokens), single heads in BHSD.
 * Kernels address a piece through `heads_per_row` and strides relative to its first element.
 * The piece plan itself comes from the AssemblyScript planner (`planPieces` in asm/plan.ts,
 * through src/plan.ts); this module turns its answer into pieces or `TOO_LARGE` errors and sizes
 * the draft scratch.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import { type Piece, planPieces } from "../plan.ts";
import type { DenseSpec } from "../types.ts";

/** Element strides of a tensor: element (b, t, h, d) is at `b*sB + t*sT + h*sH + d`. */
export interface Strides {
  sB: number;
  sT: number;
  sH: number;
}

/**
 * Strides of the op's layout.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { strides } from "./pieces.ts";
 * const s = strides({ batch: 2, tokens: 5, heads: 3, headDim: 4, layout: "BHSD", dtype: "f32", scale: 1 });
 * assert.ok(s.sT === 4 && s.sH === 20 && s.sB === 60);
 * ```
 */
export function strides(spec: DenseSpec): Strides {
  const { tokens: N, heads: H, headDim: D } = spec;
  return spec.layout === "BSHD"
    ? { sB: N * H * D, sT: H * D, sH: D }
    : { sB: H * N * D, sT: D, sH: N * D };
}

/** One piece of an op (computed by asm/plan.ts; see `planPieces` in src/plan.ts). */
export type { Piece };

/** Sizes that bound a piece. */
export interface PieceLimits {
  /** Largest binding (and buffer) in bytes, already less any offset-alignment slack. */
  maxBytes: number;
  /** Bytes of the largest per-(batch, head) internal buffer (draft map, block lists). */
  perPairBytes: number;
}

/**
 * Pieces of `spec`: as few as fit `limits`, or `TOO_LARGE` naming the field at fault.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { splitPieces } from "./pieces.ts";
 * const spec = { batch: 2, tokens: 8, heads: 2, headDim: 4, layout: "BHSD" as const, dtype: "f32" as const, scale: 1 };
 * const pieces = splitPieces(spec, { maxBytes: 300, perPairBytes: 0 });
 * assert.ok(pieces.length === 2 && pieces[1].bh0 === 2 && pieces[1].elemOffset === 64);
 * ```
 */
export function splitPieces(spec: DenseSpec, limits: PieceLimits): Piece[] {
  const bshd = spec.layout === "BSHD";
  const { maxBytes, perPairBytes } = limits;
  const plan = planPieces(
    { ...spec, elemBytes: spec.dtype === "f16" ? 2 : 4, bshd },
    maxBytes,
    perPairBytes,
  );
  if (plan.ok) return plan.pieces;
  const unit = bshd ? "one batch element" : "one head";
  switch (plan.reason) {
    case "unit":
      throw new DraftAttentionError(
        "TOO_LARGE",
        "q",
        `${bshd ? `${unit} (BSHD keeps its heads interleaved)` : unit} of q holds ` +
          `${plan.unitBytes} bytes; the device binds at most ${maxBytes} bytes` +
          (bshd ? `; the BHSD layout can be split per head` : ""),
      );
    case "internal":
      throw new DraftAttentionError(
        "TOO_LARGE",
        "frames",
        `the draft map and block lists of ${unit} need ${plan.internalBytes} bytes; the ` +
          `device binds at most ${maxBytes} bytes`,
      );
    case "count":
      throw new DraftAttentionError(
        "TOO_LARGE",
        "q",
        `q splits into more than ${2 ** 31 - 1} pieces of at most ${maxBytes} bytes`,
      );
  }
}

/**
 * Tuning of the draft scratch: the bytes that the buffers used only while a mask is built
 * (pooled Q and K, the importance map, the radix-select histogram and state) may take. The op
 * builds the masks of a piece in groups of as many (batch, head) pairs as fit this budget (at
 * least one pair), reusing one scratch for every group and piece; the block lists stay whole.
 * Read at op creation; tests lower it to force several groups.
 */
export const MASK_TUNING: { scratchBytes: number } = { scratchBytes: 16 * 1024 * 1024 };

/** Which scratch buffers a mask stage uses. */
export interface ScratchUse {
  /** Pooled Q and K (the draft map or the hybrid estimator). */
  draftMap: boolean;
  /** The radix-select histogram and state (the percentile policy). */
  percentile: boolean;
  /**
   * The token-budget threshold's bins (772 u32, `TOKENS_WORDS` in mask.ts) and, without the
   * percentile policy, its state (budget "tokens", except rowTopK).
   */
  tokens?: boolean;
}

/**
 * Bytes of draft scratch per (batch, head) pair for `g` video tiles: pooled Q and K (f32,
 * `g * headDim` each) with the draft map, the importance map (f32, `g * g`), with the
 * percentile policy the radix-select histogram (256 u32) and state (2 u32), and with the token
 * budget the token threshold's bins (772 u32) and state.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { scratchPerPair } from "./pieces.ts";
 * const bytes = scratchPerPair(990, 128, { draftMap: true, percentile: true });
 * assert.equal(bytes, 2 * 990 * 128 * 4 + 990 * 990 * 4 + 256 * 4 + 8);
 * ```
 */
export function scratchPerPair(g: number, headDim: number, use: ScratchUse): number {
  return (use.draftMap ? 2 * g * headDim * 4 : 0) + g * g * 4 +
    (use.percentile ? 256 * 4 + 8 : 0) + (use.tokens ? 772 * 4 + (use.percentile ? 0 : 8) : 0);
}

/**
 * Pairs per mask group: as many as `budget` bytes of scratch hold at `perPair` bytes each, at
 * least 1 and at most `pairs` (the largest piece, so that a small op builds its masks in one
 * group, with no extra dispatch).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { groupPairs } from "./pieces.ts";
 * assert.equal(groupPairs(4_935_192, 24, 16 * 2 ** 20), 3); // HunyuanVideo 768p
 * assert.equal(groupPairs(40_000, 24, 16 * 2 ** 20), 24);
 * assert.equal(groupPairs(2 ** 25, 24, 16 * 2 ** 20), 1);
 * ```
 */
export function groupPairs(
  perPair: number,
  pairs: number,
  budget: number = MASK_TUNING.scratchBytes,
): number {
  return Math.max(1, Math.min(pairs, Math.floor(budget / Math.max(1, perPair))));
}
