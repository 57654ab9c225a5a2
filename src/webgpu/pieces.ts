/**
 * Splitting an op into pieces that each fit one storage-buffer binding. A piece is a run of
 * consecutive (batch, head) pairs whose q/k/v/out elements form one contiguous range: whole
 * batch elements in BSHD (heads are interleaved along the tokens), single heads in BHSD.
 * Kernels address a piece through `heads_per_row` and strides relative to its first element.
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
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
 * import { strides } from "./pieces.ts";
 * const s = strides({ batch: 2, tokens: 5, heads: 3, headDim: 4, layout: "BHSD", dtype: "f32", scale: 1 });
 * console.assert(s.sT === 4 && s.sH === 20 && s.sB === 60);
 * ```
 */
export function strides(spec: DenseSpec): Strides {
  const { tokens: N, heads: H, headDim: D } = spec;
  return spec.layout === "BSHD"
    ? { sB: N * H * D, sT: H * D, sH: D }
    : { sB: H * N * D, sT: D, sH: N * D };
}

/** One piece of an op. */
export interface Piece {
  /** First (batch, head) pair, flattened `b * heads + h`. */
  bh0: number;
  /** Pairs in the piece. */
  nbh: number;
  /** Kernel's `heads_per_row`: local pair `x` is batch `x / hpr`, head `x % hpr` of the piece. */
  headsPerRow: number;
  /** First element of the piece in q/k/v/out, and its element count. */
  elemOffset: number;
  elems: number;
}

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
 * import { splitPieces } from "./pieces.ts";
 * const spec = { batch: 2, tokens: 8, heads: 2, headDim: 4, layout: "BHSD" as const, dtype: "f32" as const, scale: 1 };
 * const pieces = splitPieces(spec, { maxBytes: 300, perPairBytes: 0 });
 * console.assert(pieces.length === 2 && pieces[1].bh0 === 2 && pieces[1].elemOffset === 64);
 * ```
 */
export function splitPieces(spec: DenseSpec, limits: PieceLimits): Piece[] {
  const { batch: B, tokens: N, heads: H, headDim: D } = spec;
  const eb = spec.dtype === "f16" ? 2 : 4;
  const bshd = spec.layout === "BSHD";
  const pairsPerUnit = bshd ? H : 1;
  const unitElems = pairsPerUnit * N * D;
  const unitBytes = unitElems * eb;
  const units = bshd ? B : B * H;
  if (unitBytes > limits.maxBytes) {
    const what = bshd ? "one batch element (BSHD keeps its heads interleaved)" : "one head";
    throw new DraftAttentionError(
      "TOO_LARGE",
      "q",
      `${what} of q holds ${unitBytes} bytes; the device binds at most ${limits.maxBytes} bytes` +
        (bshd ? `; the BHSD layout can be split per head` : ""),
    );
  }
  const internal = pairsPerUnit * limits.perPairBytes;
  if (internal > limits.maxBytes) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "frames",
      `the draft map and block lists of ${bshd ? "one batch element" : "one head"} need ` +
        `${internal} bytes; the device binds at most ${limits.maxBytes} bytes`,
    );
  }
  const perPiece = Math.min(
    units,
    Math.floor(limits.maxBytes / unitBytes),
    internal > 0 ? Math.floor(limits.maxBytes / internal) : units,
  );
  const pieces: Piece[] = [];
  for (let u = 0; u < units; u += perPiece) {
    const n = Math.min(perPiece, units - u);
    const nbh = n * pairsPerUnit;
    pieces.push({
      bh0: u * pairsPerUnit,
      nbh,
      headsPerRow: bshd ? H : nbh,
      elemOffset: u * unitElems,
      elems: n * unitElems,
    });
  }
  return pieces;
}
