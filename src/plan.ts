/**
 * The per-geometry plan (token order, tiles), the exact block-mask selection and the block
 * lists, computed by the AssemblyScript planner (asm/plan.ts) and shared by both backends.
 * Everything here is synchronous: the planner instance is created on first use with
 * `new WebAssembly.Module` / `new WebAssembly.Instance`.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import type { Geometry, Plan } from "./types.ts";
import { TEXT_TILE } from "./validate.ts";
import { type AsmBuild, AsmInstance } from "./_asm.ts";

let plannerBuild: AsmBuild = "release";
let planner: AsmInstance | undefined;

/**
 * Linear memory the planner keeps between calls: 64 MiB covers every bundled model (HunyuanVideo
 * 768p's plan takes 1 MiB, its block lists 4 MiB). WebAssembly memory never shrinks, so once a
 * call has grown it past this the instance is dropped (a new one costs well under a millisecond:
 * the module stays compiled) and the garbage collector takes its memory back.
 */
export const PLANNER_KEEP_BYTES = 64 * 2 ** 20;

/**
 * The planner instance, memory reset. Every planner call is synchronous, so a microtask queued
 * here runs once the calling task is done, returned or thrown: it drops an instance grown too
 * large (several calls of one task, such as a plan and its work items, share it first).
 */
function instance(): AsmInstance {
  if (!planner) planner = new AsmInstance(plannerBuild);
  const a = planner;
  a.reset();
  queueMicrotask(() => {
    if (planner === a && a.memoryBytes > PLANNER_KEEP_BYTES) planner = undefined;
  });
  return a;
}

/** Bytes of linear memory the planner holds now (0 when none is instantiated); for tests. */
export function plannerMemoryBytes(): number {
  return planner?.memoryBytes ?? 0;
}

/**
 * Test hook: makes the planner use the `"debug"` build of asm/ (assertions on) or the
 * `"release"` build (the default). The next call instantiates the chosen build.
 */
export function usePlannerBuild(build: AsmBuild): void {
  if (build !== "release" && build !== "debug") {
    throw new DraftAttentionError("INVALID_OPTION", "build", `got ${describeValue(build)}`);
  }
  plannerBuild = build;
  planner = undefined;
}

function int(field: string, value: unknown, min: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > 2 ** 31 - 1) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be an integer >= ${min}, got ${describeValue(value)}`,
    );
  }
  return value;
}

/**
 * Builds the plan of a geometry: window order, its inverse and the tile table.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildPlan } from "./plan.ts";
 * const plan = buildPlan({
 *   frames: 1, height: 3, width: 4, textTokens: 2, textPosition: "after", poolH: 2, poolW: 2,
 * });
 * assert.ok(plan.g === 4 && plan.tiles === 5);
 * assert.equal(plan.order.join(), "0,1,4,5,2,3,6,7,8,9,10,11,12,13");
 * ```
 */
export function buildPlan(geometry: Geometry): Plan {
  const frames = int("frames", geometry.frames, 1);
  const height = int("height", geometry.height, 1);
  const width = int("width", geometry.width, 1);
  const textTokens = int("textTokens", geometry.textTokens, 0);
  const poolH = int("poolH", geometry.poolH, 1);
  const poolW = int("poolW", geometry.poolW, 1);
  const textPosition = geometry.textPosition;
  if (textPosition !== "after" && textPosition !== "before") {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "textPosition",
      `must be "after" or "before", got ${describeValue(textPosition)}`,
    );
  }
  const nh = Math.ceil(height / poolH);
  const nw = Math.ceil(width / poolW);
  const g = frames * nh * nw;
  const videoTokens = frames * height * width;
  const tokens = videoTokens + textTokens;
  if (tokens > 2 ** 31 - 1) {
    throw new DraftAttentionError(
      "TOO_LARGE",
      "tokens",
      `video and text tokens = ${tokens} exceed ${2 ** 31 - 1}`,
    );
  }
  const textTiles = Math.ceil(textTokens / TEXT_TILE);
  const tiles = g + textTiles;
  const a = instance();
  const order = a.alloc(tokens * 4, "the token order");
  const inverse = a.alloc(tokens * 4, "the token order");
  const tileStart = a.alloc(tiles * 4, "the tile table");
  const tileLen = a.alloc(tiles * 4, "the tile table");
  const maxTileLen = a.x.planBuild(
    frames,
    height,
    width,
    textTokens,
    textPosition === "before" ? 1 : 0,
    poolH,
    poolW,
    order,
    inverse,
    tileStart,
    tileLen,
  );
  return {
    geometry: { frames, height, width, textTokens, textPosition, poolH, poolW },
    tokens,
    videoTokens,
    nh,
    nw,
    g,
    textTiles,
    tiles,
    order: a.i32(order, tokens).slice(),
    inverse: a.i32(inverse, tokens).slice(),
    tileStart: a.i32(tileStart, tiles).slice(),
    tileLen: a.i32(tileLen, tiles).slice(),
    maxTileLen,
  };
}

/**
 * The plan dense attention uses: one row of `tokens` tokens cut into windows of `TEXT_TILE`
 * (window order = identity).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { densePlan } from "./plan.ts";
 * const plan = densePlan(300);
 * assert.ok(plan.tiles === 3 && plan.tileLen.join() === "128,128,44");
 * ```
 */
export function densePlan(tokens: number): Plan {
  return buildPlan({
    frames: 1,
    height: 1,
    width: tokens,
    textTokens: 0,
    textPosition: "after",
    poolH: 1,
    poolW: TEXT_TILE,
  });
}

/**
 * The exact block mask of one draft map `p` (`g x g`, row-major, entries >= 0): an entry is
 * kept when it is >= the `keep`-th largest entry of `p` (ties kept) or the largest of its row.
 * Returns `g * g` bytes, 1 = kept. This is the reference that the GPU mask must match.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectMask } from "./plan.ts";
 * const mask = selectMask(new Float32Array([0.5, 0.5, 0.1, 0.9]), 2, 1);
 * assert.equal(mask.join(), "1,1,0,1");
 * ```
 */
export function selectMask(p: Float32Array, g: number, keep: number): Uint8Array {
  int("g", g, 1);
  if (p.length !== g * g) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "p",
      `must hold g * g = ${g * g} values, got ${p.length}`,
    );
  }
  if (!Number.isInteger(keep) || keep < 1 || keep > g * g) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      "keep",
      `must be an integer in [1, ${g * g}], got ${describeValue(keep)}`,
    );
  }
  const a = instance();
  const pp = a.alloc(g * g * 4, "the draft map");
  const mask = a.alloc(g * g, "the block mask");
  a.f32(pp, g * g).set(p);
  a.x.selectMask(pp, g, keep, mask);
  return a.u8(mask, g * g).slice();
}

/** Block lists of a mask: row `t` of `list` (`tiles` wide) holds `count[t]` tile ids. */
export interface Schedule {
  /** `[tiles]`: key tiles visited by each query tile. */
  count: Int32Array;
  /** `[tiles * tiles]`: row `t` holds `count[t]` key tile ids, increasing; the rest is 0. */
  list: Int32Array;
}

/**
 * Block lists from a block mask (`[g, g]`): video query tile `i` visits its kept video tiles in
 * increasing order, then every text tile; text query tiles visit every tile.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildPlan, maskToSchedule } from "./plan.ts";
 * const plan = buildPlan({
 *   frames: 1, height: 1, width: 2, textTokens: 1, textPosition: "after", poolH: 1, poolW: 1,
 * });
 * const { count, list } = maskToSchedule(new Uint8Array([1, 0, 1, 1]), plan);
 * assert.ok(count.join() === "2,3,3" && list.join() === "0,2,0,0,1,2,0,1,2");
 * ```
 */
export function maskToSchedule(mask: Uint8Array, plan: Plan): Schedule {
  const { g, tiles } = plan;
  if (mask.length !== g * g) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "mask",
      `must hold g * g = ${g * g} bytes, got ${mask.length}`,
    );
  }
  const a = instance();
  const m = a.alloc(g * g, "the block mask");
  const count = a.alloc(tiles * 4, "the block lists");
  const list = a.alloc(tiles * tiles * 4, "the block lists");
  a.u8(m, g * g).set(mask);
  a.i32(list, tiles * tiles).fill(0);
  a.x.maskToSchedule(m, g, tiles, count, list);
  return { count: a.i32(count, tiles).slice(), list: a.i32(list, tiles * tiles).slice() };
}

/**
 * The GPU's work table: `(tile, rowStart, rows)` triples, tiles in increasing order, each query
 * tile cut into pieces of at most `rowsPerItem` rows starting at its first row. `rowStart` is a
 * window-order position (absolute, not relative to the tile); every query row is in exactly
 * one item.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { densePlan, workItems } from "./plan.ts";
 * const items = workItems(densePlan(200), 64);
 * assert.equal(items.join(), "0,0,64,0,64,64,1,128,64,1,192,8");
 * ```
 */
export function workItems(plan: Plan, rowsPerItem: number): Int32Array {
  int("rowsPerItem", rowsPerItem, 1);
  const a = instance();
  const { tiles } = plan;
  const start = a.alloc(tiles * 4, "the tile table");
  const len = a.alloc(tiles * 4, "the tile table");
  a.i32(start, tiles).set(plan.tileStart);
  a.i32(len, tiles).set(plan.tileLen);
  const n = a.x.workItemCount(len, tiles, rowsPerItem);
  const out = a.alloc(n * 12, "the work items");
  a.x.workItemsFill(start, len, tiles, rowsPerItem, out);
  return a.i32(out, 3 * n).slice();
}

/** One piece of an op: a run of (batch, head) pairs that one storage-buffer binding holds. */
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

/** The shape that `planPieces` splits. */
export interface PieceShape {
  batch: number;
  tokens: number;
  heads: number;
  headDim: number;
  /** Bytes per element of q/k/v/out (2 for f16, 4 for f32). */
  elemBytes: number;
  /** BSHD (heads interleaved: whole batch elements per piece) or BHSD (single heads). */
  bshd: boolean;
}

/**
 * The answer of `planPieces`: the pieces, or why there are none (`"unit"`: one batch element
 * (BSHD) or one head (BHSD) of q exceeds the binding; `"internal"`: the internal buffers of one
 * such unit do; `"count"`: more than 2^31 - 1 pieces). Either way the byte counts of one unit.
 */
export type PiecePlan =
  & { unitBytes: number; internalBytes: number }
  & ({ ok: true; pieces: Piece[] } | { ok: false; reason: "unit" | "internal" | "count" });

function bytes(field: string, value: unknown, min: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < min) {
    throw new DraftAttentionError(
      "INVALID_OPTION",
      field,
      `must be an integer number of bytes >= ${min}, got ${describeValue(value)}`,
    );
  }
  return value as number;
}

const PIECE_SLOTS = 5;
const PIECE_REASONS = { [-1]: "unit", [-2]: "internal", [-3]: "count" } as const;

/**
 * Splits an op into as few pieces as fit a storage binding of `maxBytes` bytes, each
 * (batch, head) pair of a piece also taking `perPairBytes` of internal buffers (asm/plan.ts
 * `planPieces`). A piece is a run of consecutive pairs whose q/k/v/out elements form one
 * contiguous range: whole batch elements in BSHD, single heads in BHSD.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { planPieces } from "./plan.ts";
 * const shape = { batch: 2, tokens: 8, heads: 2, headDim: 4, elemBytes: 4, bshd: false };
 * const plan = planPieces(shape, 300, 0);
 * assert.ok(plan.ok && plan.pieces.length === 2 && plan.pieces[1].elemOffset === 64);
 * assert.ok(!planPieces(shape, 100, 0).ok && plan.unitBytes === 128);
 * ```
 */
export function planPieces(shape: PieceShape, maxBytes: number, perPairBytes: number): PiecePlan {
  const batch = int("batch", shape.batch, 1);
  const tokens = int("tokens", shape.tokens, 1);
  const heads = int("heads", shape.heads, 1);
  const headDim = int("headDim", shape.headDim, 1);
  const elemBytes = int("elemBytes", shape.elemBytes, 1);
  // maxBytes may be < 0 (a binding limit less the alignment slack): then nothing fits.
  bytes("maxBytes", maxBytes, -Number.MAX_SAFE_INTEGER);
  bytes("perPairBytes", perPairBytes, 0);
  const a = instance();
  const sizes = a.alloc(16, "the piece plan");
  const args = [batch, tokens, heads, headDim, elemBytes, shape.bshd ? 1 : 0] as const;
  const n = a.x.planPieces(...args, maxBytes, perPairBytes, sizes, 0);
  let [unitBytes, internalBytes] = a.f64(sizes, 2);
  if (n < 0) {
    const reason = PIECE_REASONS[n as -1 | -2 | -3];
    return { ok: false, reason, unitBytes, internalBytes };
  }
  const out = a.alloc(n * PIECE_SLOTS * 8, "the piece plan");
  a.x.planPieces(...args, maxBytes, perPairBytes, sizes, out);
  [unitBytes, internalBytes] = a.f64(sizes, 2);
  const t = a.f64(out, n * PIECE_SLOTS);
  const pieces: Piece[] = [];
  for (let i = 0; i < n * PIECE_SLOTS; i += PIECE_SLOTS) {
    pieces.push({
      bh0: t[i],
      nbh: t[i + 1],
      headsPerRow: t[i + 2],
      elemOffset: t[i + 3],
      elems: t[i + 4],
    });
  }
  return { ok: true, pieces, unitBytes, internalBytes };
}
