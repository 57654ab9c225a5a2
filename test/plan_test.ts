// The planner (asm/plan.ts via src/plan.ts) against independent TypeScript computations
// written from the definitions in docs/spec.md. Uses the debug build of asm/ (assertions on).
import assert from "node:assert/strict";
import "./_asm_debug.ts";
import { DraftAttentionError } from "../src/errors.ts";
import {
  buildPlan,
  densePlan,
  maskToSchedule,
  type Piece,
  type PieceShape,
  planPieces,
  selectMask,
  usePlannerBuild,
  workItems,
} from "../src/plan.ts";
import type { DenseSpec, Geometry, Plan } from "../src/types.ts";
import { TEXT_TILE } from "../src/validate.ts";
import { splitPieces } from "../src/webgpu/pieces.ts";

usePlannerBuild("debug");

function geo(
  frames: number,
  height: number,
  width: number,
  poolH: number,
  poolW: number,
  textTokens = 0,
  textPosition: "after" | "before" = "after",
): Geometry {
  return { frames, height, width, textTokens, textPosition, poolH, poolW };
}

const GEOMETRIES: Geometry[] = [
  geo(3, 13, 21, 8, 16),
  geo(3, 13, 21, 8, 16, 130, "after"),
  geo(3, 13, 21, 8, 16, 130, "before"),
  geo(2, 30, 52, 8, 16),
  geo(2, 30, 52, 8, 16, 256, "after"),
  geo(1, 5, 7, 8, 16),
  geo(1, 5, 7, 8, 16, 3, "before"),
  geo(2, 8, 16, 8, 16, 128, "after"),
  geo(4, 3, 5, 2, 2, 1, "before"),
  geo(1, 1, 1, 8, 16),
  geo(1, 1, 1, 1, 1, 129, "after"),
  geo(2, 9, 9, 1, 1),
  geo(1, 1, 1000, 1, 128),
];

/**
 * The expected plan, from the definition: sort video tokens by (frame, window row, window
 * column, row, column); text keeps its place; tiles = windows in draft numbering, then runs of
 * TEXT_TILE text tokens.
 */
function expected(g0: Geometry) {
  const { frames: F, height: H, width: W, poolH, poolW, textTokens: T } = g0;
  const before = g0.textPosition === "before";
  const nh = Math.ceil(H / poolH);
  const nw = Math.ceil(W / poolW);
  const g = F * nh * nw;
  const video = F * H * W;
  const videoBase = before ? T : 0;
  const textBase = before ? 0 : video;
  const keys: { raster: number; key: number[] }[] = [];
  for (let f = 0; f < F; f++) {
    for (let r = 0; r < H; r++) {
      for (let c = 0; c < W; c++) {
        keys.push({
          raster: videoBase + (f * H + r) * W + c,
          key: [f, Math.floor(r / poolH), Math.floor(c / poolW), r, c],
        });
      }
    }
  }
  keys.sort((a, b) => {
    for (let i = 0; i < 5; i++) if (a.key[i] !== b.key[i]) return a.key[i] - b.key[i];
    return 0;
  });
  const order = new Array<number>(video + T);
  keys.forEach((k, i) => order[videoBase + i] = k.raster);
  for (let i = 0; i < T; i++) order[textBase + i] = textBase + i;
  const textTiles = Math.ceil(T / TEXT_TILE);
  const tileStart: number[] = [];
  const tileLen: number[] = [];
  let p = videoBase;
  for (let f = 0; f < F; f++) {
    for (let wr = 0; wr < nh; wr++) {
      for (let wc = 0; wc < nw; wc++) {
        const len = (Math.min(H, (wr + 1) * poolH) - wr * poolH) *
          (Math.min(W, (wc + 1) * poolW) - wc * poolW);
        tileStart.push(p);
        tileLen.push(len);
        p += len;
      }
    }
  }
  for (let k = 0; k < textTiles; k++) {
    tileStart.push(textBase + k * TEXT_TILE);
    tileLen.push(Math.min(TEXT_TILE, T - k * TEXT_TILE));
  }
  return { nh, nw, g, video, order, textTiles, tileStart, tileLen };
}

/** Window (draft token) of a raster token, or -1 for text. */
function windowOf(g0: Geometry, t: number): number {
  const video = g0.frames * g0.height * g0.width;
  const v = g0.textPosition === "before" ? t - g0.textTokens : t;
  if (v < 0 || v >= video) return -1;
  const f = Math.floor(v / (g0.height * g0.width));
  const r = Math.floor(v / g0.width) % g0.height;
  const c = v % g0.width;
  const nw = Math.ceil(g0.width / g0.poolW);
  const nh = Math.ceil(g0.height / g0.poolH);
  return (f * nh + Math.floor(r / g0.poolH)) * nw + Math.floor(c / g0.poolW);
}

function checkPlan(plan: Plan, g0: Geometry): void {
  const what = JSON.stringify(g0);
  const want = expected(g0);
  assert.deepEqual(plan.geometry, g0, what);
  assert.equal(plan.videoTokens, want.video, what);
  assert.equal(plan.tokens, want.video + g0.textTokens, what);
  assert.equal(plan.nh, want.nh, what);
  assert.equal(plan.nw, want.nw, what);
  assert.equal(plan.g, want.g, what);
  assert.equal(plan.textTiles, want.textTiles, what);
  assert.equal(plan.tiles, want.g + want.textTiles, what);
  assert.deepEqual(Array.from(plan.order), want.order, `${what}: order`);
  assert.deepEqual(Array.from(plan.tileStart), want.tileStart, `${what}: tileStart`);
  assert.deepEqual(Array.from(plan.tileLen), want.tileLen, `${what}: tileLen`);
  assert.equal(plan.maxTileLen, Math.max(...want.tileLen), what);
  // order and inverse are inverse permutations.
  const n = plan.tokens;
  assert.equal(plan.order.length, n);
  assert.equal(plan.inverse.length, n);
  for (let p = 0; p < n; p++) assert.equal(plan.inverse[plan.order[p]], p, `${what}: inverse`);
  // Tiles cover window order exactly once; each video tile holds exactly its window's tokens.
  const seen = new Uint8Array(n);
  for (let t = 0; t < plan.tiles; t++) {
    assert.ok(plan.tileLen[t] >= 1, `${what}: empty tile ${t}`);
    for (let p = plan.tileStart[t]; p < plan.tileStart[t] + plan.tileLen[t]; p++) {
      assert.equal(seen[p], 0, `${what}: position ${p} in two tiles`);
      seen[p] = 1;
      assert.equal(windowOf(g0, plan.order[p]), t < plan.g ? t : -1, `${what}: tile ${t}`);
    }
  }
  assert.ok(seen.every((x) => x === 1), `${what}: positions outside every tile`);
  // Text keeps its place.
  const textBase = g0.textPosition === "before" ? 0 : plan.videoTokens;
  for (let i = 0; i < g0.textTokens; i++) assert.equal(plan.order[textBase + i], textBase + i);
}

Deno.test("buildPlan: window order, inverse and tiles match the definition", () => {
  for (const g0 of GEOMETRIES) checkPlan(buildPlan(g0), g0);
});

Deno.test("buildPlan: release and debug builds agree", () => {
  const debug = GEOMETRIES.map((g0) => buildPlan(g0));
  usePlannerBuild("release");
  try {
    GEOMETRIES.forEach((g0, i) => assert.deepEqual(buildPlan(g0), debug[i]));
  } finally {
    usePlannerBuild("debug");
  }
});

Deno.test("densePlan: identity order, tiles of TEXT_TILE", () => {
  for (const n of [1, 63, 127, 128, 129, 1025]) {
    const plan = densePlan(n);
    checkPlan(plan, geo(1, 1, n, 1, TEXT_TILE));
    assert.deepEqual(Array.from(plan.order), Array.from({ length: n }, (_, i) => i));
    assert.equal(plan.tiles, Math.ceil(n / TEXT_TILE));
    assert.equal(plan.g, plan.tiles);
  }
});

Deno.test("buildPlan: rejects a bad geometry", () => {
  assert.throws(
    () => buildPlan(geo(0, 1, 1, 1, 1)),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_OPTION" && e.field === "frames",
  );
  assert.throws(
    () => buildPlan({ ...geo(1, 1, 1, 1, 1), textPosition: "middle" as "after" }),
    (e) => e instanceof DraftAttentionError && e.field === "textPosition",
  );
});

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** The rule by sorting: keep x >= the keep-th largest (with multiplicity) or x = its row max. */
function bruteMask(p: Float32Array, g: number, keep: number): Uint8Array {
  const t = Array.from(p).sort((a, b) => b - a)[keep - 1];
  const mask = new Uint8Array(g * g);
  for (let i = 0; i < g; i++) {
    let m = 0;
    for (let j = 0; j < g; j++) m = Math.max(m, p[i * g + j]);
    for (let j = 0; j < g; j++) {
      const x = p[i * g + j];
      mask[i * g + j] = x >= t || x === m ? 1 : 0;
    }
  }
  return mask;
}

Deno.test("selectMask equals a brute-force sort (ties, row maxima, keep = 1 and g*g)", () => {
  const r = rng(42);
  const kinds: ((i: number) => number)[] = [
    () => r(), // distinct values
    () => Math.floor(r() * 5) / 8, // many ties, zeros included
    () => 0.25, // everything tied
    () => (r() < 0.7 ? 0 : r() * 1e-38), // zeros and subnormals
    (i) => Math.fround(0.5 + (i % 7) * 2 ** -24), // differ in the lowest bits only
  ];
  for (const g of [1, 2, 3, 7, 16, 45]) {
    for (const kind of kinds) {
      const p = new Float32Array(g * g);
      for (let i = 0; i < p.length; i++) p[i] = kind(i);
      const keeps = new Set([1, 2, Math.ceil(g * g / 10), Math.ceil(g * g / 2), g * g - 1, g * g]);
      for (const keep of keeps) {
        if (keep < 1 || keep > g * g) continue;
        assert.deepEqual(selectMask(p, g, keep), bruteMask(p, g, keep), `g=${g} keep=${keep}`);
      }
    }
  }
});

Deno.test("selectMask: every row keeps its maximum; keep = g*g keeps all", () => {
  const g = 9;
  const p = new Float32Array(g * g);
  // One peak per row, all far below the keep = 1 threshold except row 0's.
  for (let i = 0; i < g; i++) p[i * g + ((i * 4) % g)] = i === 0 ? 1 : 1e-3 * i;
  const mask = selectMask(p, g, 1);
  for (let i = 0; i < g; i++) {
    assert.equal(mask[i * g + ((i * 4) % g)], 1);
    assert.equal(mask.subarray(i * g, i * g + g).reduce((a, b) => a + b, 0), 1);
  }
  assert.ok(selectMask(p, g, g * g).every((x) => x === 1));
});

Deno.test("selectMask rejects bad sizes", () => {
  assert.throws(
    () => selectMask(new Float32Array(3), 2, 1),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_INPUT" && e.field === "p",
  );
  assert.throws(
    () => selectMask(new Float32Array(4), 2, 0),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_OPTION" && e.field === "keep",
  );
  assert.throws(
    () => selectMask(new Float32Array(4), 2, 5),
    (e) => e instanceof DraftAttentionError && e.field === "keep",
  );
});

Deno.test("maskToSchedule: kept video tiles in order, then text; text rows see all", () => {
  const r = rng(7);
  for (const g0 of [geo(2, 13, 21, 8, 16, 300, "before"), geo(1, 5, 7, 2, 2), geo(1, 1, 1, 1, 1)]) {
    const plan = buildPlan(g0);
    const { g, tiles } = plan;
    for (const density of [0, 0.3, 1]) {
      const mask = new Uint8Array(g * g).map(() => (r() < density ? 1 : 0));
      const { count, list } = maskToSchedule(mask, plan);
      assert.equal(count.length, tiles);
      assert.equal(list.length, tiles * tiles);
      for (let i = 0; i < tiles; i++) {
        const want: number[] = [];
        if (i < g) {
          for (let j = 0; j < g; j++) if (mask[i * g + j]) want.push(j);
          for (let j = g; j < tiles; j++) want.push(j);
        } else {
          for (let j = 0; j < tiles; j++) want.push(j);
        }
        assert.equal(count[i], want.length);
        assert.deepEqual(Array.from(list.subarray(i * tiles, i * tiles + count[i])), want);
        assert.ok(list.subarray(i * tiles + count[i], (i + 1) * tiles).every((x) => x === 0));
      }
    }
  }
  assert.throws(
    () => maskToSchedule(new Uint8Array(3), buildPlan(geo(1, 2, 2, 1, 1))),
    (e) => e instanceof DraftAttentionError && e.code === "INVALID_INPUT" && e.field === "mask",
  );
});

Deno.test("workItems cover every query row exactly once, in tile order", () => {
  for (const g0 of GEOMETRIES) {
    const plan = buildPlan(g0);
    for (const rowsPerItem of [1, 7, 16, 64, 128, 1000]) {
      const items = workItems(plan, rowsPerItem);
      assert.equal(items.length % 3, 0);
      const seen = new Uint8Array(plan.tokens);
      let lastTile = -1;
      let expectedCount = 0;
      for (let t = 0; t < plan.tiles; t++) {
        expectedCount += Math.ceil(plan.tileLen[t] / rowsPerItem);
      }
      assert.equal(items.length / 3, expectedCount);
      for (let i = 0; i < items.length; i += 3) {
        const [tile, rowStart, rows] = [items[i], items[i + 1], items[i + 2]];
        assert.ok(tile >= lastTile, "tile order");
        lastTile = tile;
        assert.ok(rows >= 1 && rows <= rowsPerItem);
        assert.ok(rowStart >= plan.tileStart[tile]);
        assert.ok(rowStart + rows <= plan.tileStart[tile] + plan.tileLen[tile]);
        assert.equal((rowStart - plan.tileStart[tile]) % rowsPerItem, 0);
        for (let p = rowStart; p < rowStart + rows; p++) {
          assert.equal(seen[p], 0, "row in two items");
          seen[p] = 1;
        }
      }
      assert.ok(seen.every((x) => x === 1), "row in no item");
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Pieces (asm/plan.ts planPieces) against a reference in exact BigInt arithmetic that packs
// units (batch elements in BSHD, heads in BHSD) greedily while the piece still fits.
// ---------------------------------------------------------------------------------------------

type RefPieces = { pieces: Piece[] } | { reason: "unit" | "internal" };

function refPieces(s: PieceShape, maxBytes: number, perPairBytes: number): RefPieces {
  const [B, N, H, D, eb] = [s.batch, s.tokens, s.heads, s.headDim, s.elemBytes].map(BigInt);
  const max = BigInt(maxBytes);
  const pairs = s.bshd ? H : 1n; // pairs per unit
  const unitElems = pairs * N * D;
  const internal = pairs * BigInt(perPairBytes);
  if (unitElems * eb > max) return { reason: "unit" };
  if (internal > max) return { reason: "internal" };
  const units = s.bshd ? B : B * H;
  const pieces: Piece[] = [];
  let u = 0n;
  while (u < units) {
    let n = 1n;
    while (u + n < units && (n + 1n) * unitElems * eb <= max && (n + 1n) * internal <= max) n++;
    pieces.push({
      bh0: Number(u * pairs),
      nbh: Number(n * pairs),
      headsPerRow: Number(s.bshd ? H : n),
      elemOffset: Number(u * unitElems),
      elems: Number(n * unitElems),
    });
    u += n;
  }
  return { pieces };
}

function checkPieces(s: PieceShape, maxBytes: number, perPairBytes: number): Piece[] | undefined {
  const what = `${JSON.stringify(s)} maxBytes ${maxBytes} perPairBytes ${perPairBytes}`;
  const got = planPieces(s, maxBytes, perPairBytes);
  const want = refPieces(s, maxBytes, perPairBytes);
  const pairs = s.bshd ? s.heads : 1;
  assert.equal(got.unitBytes, pairs * s.tokens * s.headDim * s.elemBytes, what);
  assert.equal(got.internalBytes, pairs * perPairBytes, what);
  if ("reason" in want) {
    assert.ok(!got.ok, what);
    assert.equal(got.reason, want.reason, what);
    return undefined;
  }
  assert.ok(got.ok, what);
  assert.deepEqual(got.pieces, want.pieces, what);
  // The pieces tile every pair and every element once, each within the limits.
  let bh = 0;
  let elem = 0;
  for (const p of got.pieces) {
    assert.equal(p.bh0, bh, what);
    assert.equal(p.elemOffset, elem, what);
    assert.ok(p.elems * s.elemBytes <= maxBytes && p.nbh * perPairBytes <= maxBytes, what);
    assert.equal(p.nbh % p.headsPerRow, 0, what);
    bh += p.nbh;
    elem += p.elems;
  }
  assert.equal(bh, s.batch * s.heads, what);
  assert.equal(elem, s.batch * s.tokens * s.heads * s.headDim, what);
  return got.pieces;
}

Deno.test("planPieces equals a greedy BigInt reference (layouts, limits at boundaries)", () => {
  let cases = 0;
  const reasons = new Set<string>();
  for (const bshd of [false, true]) {
    for (const batch of [1, 2, 3]) {
      for (const heads of [1, 2, 3, 5, 24]) {
        for (const [tokens, headDim, elemBytes] of [[1, 4, 4], [63, 16, 2], [129, 128, 4]]) {
          const s: PieceShape = { batch, tokens, heads, headDim, elemBytes, bshd };
          const unitBytes = (bshd ? heads : 1) * tokens * headDim * elemBytes;
          const units = bshd ? batch : batch * heads;
          for (const k of new Set([1, 2, 3, 5, units - 1, units, units + 1])) {
            if (k < 1) continue;
            for (const dm of [-1, 0, 1]) {
              const maxBytes = k * unitBytes + dm;
              for (const perPair of [0, 7, Math.floor(unitBytes / 3), unitBytes, 2 * unitBytes]) {
                const got = planPieces(s, maxBytes, perPair);
                if (!got.ok) reasons.add(got.reason);
                checkPieces(s, maxBytes, perPair);
                cases++;
              }
            }
          }
        }
      }
    }
  }
  assert.ok(cases > 5000, `${cases} cases`);
  assert.deepEqual([...reasons].sort(), ["internal", "unit"]);
});

Deno.test("planPieces: more than 2^31 elements and 2^32 bytes, computed exactly", () => {
  // HunyuanVideo-sized: 126,976 tokens x 24 heads x 128, f32; nothing is allocated.
  const big = (batch: number, bshd: boolean, elemBytes = 4): PieceShape => ({
    batch,
    tokens: 126_976,
    heads: 24,
    headDim: 128,
    elemBytes,
    bshd,
  });
  const MiB = 2 ** 20;
  // BSHD: one batch element (1.56 GB) is past a 128 MiB binding.
  assert.equal(checkPieces(big(4, true), 128 * MiB, 0), undefined);
  // BHSD: two heads (2 x 65 MB) per 128 MiB piece.
  const heads = checkPieces(big(4, false), 128 * MiB, 0)!;
  assert.equal(heads.length, 48);
  assert.equal(heads[47].bh0, 94);
  assert.equal(heads[47].elemOffset, 94 * 126_976 * 128);
  // 8 batch elements: 3.1e9 elements (> 2^31), 12.5 GB (> 2^32) in f32.
  for (const bshd of [false, true]) {
    for (
      const [maxBytes, perPair] of [[128 * MiB, 0], [2 ** 32, 4_935_192], [2 ** 33, 0], [
        2 ** 34,
        0,
      ]]
    ) {
      for (const elemBytes of [2, 4]) {
        const pieces = checkPieces(big(8, bshd, elemBytes), maxBytes, perPair);
        if (!pieces) continue;
        const last = pieces[pieces.length - 1];
        assert.ok(last.elemOffset + last.elems > 2 ** 31);
      }
    }
  }
  const two = checkPieces(big(8, true), 2 ** 33, 0)!;
  assert.equal(two.length, 2); // 5 batch elements (1.56 GB each) per 8 GiB piece
  assert.equal(two[1].elemOffset, 5 * 126_976 * 24 * 128);
  assert.equal(two[1].elems, 3 * 126_976 * 24 * 128);
});

Deno.test("splitPieces: TOO_LARGE names the field and the bytes", () => {
  const spec = (layout: "BSHD" | "BHSD", batch = 2, heads = 3): DenseSpec => ({
    batch,
    tokens: 100,
    heads,
    headDim: 16,
    layout,
    dtype: "f32",
    scale: 1,
  });
  const tooLarge = (f: () => unknown, field: string, message: string) =>
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof DraftAttentionError);
      assert.equal(e.code, "TOO_LARGE");
      assert.equal(e.field, field);
      assert.equal(e.message, `Invalid ${field}: ${message}`);
      return true;
    });
  tooLarge(
    () => splitPieces(spec("BSHD"), { maxBytes: 19_199, perPairBytes: 0 }),
    "q",
    "one batch element (BSHD keeps its heads interleaved) of q holds 19200 bytes; the device " +
      "binds at most 19199 bytes; the BHSD layout can be split per head",
  );
  tooLarge(
    () => splitPieces(spec("BHSD"), { maxBytes: 6399, perPairBytes: 0 }),
    "q",
    "one head of q holds 6400 bytes; the device binds at most 6399 bytes",
  );
  tooLarge(
    () => splitPieces(spec("BSHD"), { maxBytes: 19_200, perPairBytes: 6401 }),
    "frames",
    "the draft map and block lists of one batch element need 19203 bytes; the device binds at " +
      "most 19200 bytes",
  );
  tooLarge(
    () => splitPieces(spec("BHSD"), { maxBytes: 6400, perPairBytes: 6401 }),
    "frames",
    "the draft map and block lists of one head need 6401 bytes; the device binds at most 6400 " +
      "bytes",
  );
  tooLarge(
    () =>
      splitPieces({ ...spec("BHSD", 2, 2 ** 31 - 1), tokens: 1, headDim: 4 }, {
        maxBytes: 16,
        perPairBytes: 0,
      }),
    "q",
    `q splits into more than ${2 ** 31 - 1} pieces of at most 16 bytes`,
  );
  // A limit below zero (a tiny binding less the alignment slack) fits nothing.
  assert.throws(
    () => splitPieces(spec("BHSD"), { maxBytes: -1, perPairBytes: 0 }),
    (e) => e instanceof DraftAttentionError && e.code === "TOO_LARGE" && e.field === "q",
  );
  // Exactly at the limits: one unit per piece.
  assert.equal(splitPieces(spec("BSHD"), { maxBytes: 19_200, perPairBytes: 6400 }).length, 2);
  assert.equal(splitPieces(spec("BHSD"), { maxBytes: 6400, perPairBytes: 6400 }).length, 6);
  for (const bad of [Number.NaN, 0.5, -1]) {
    assert.throws(
      () =>
        planPieces(
          { batch: 1, tokens: 1, heads: 1, headDim: 4, elemBytes: 4, bshd: true },
          64,
          bad,
        ),
      (e) => e instanceof DraftAttentionError && e.code === "INVALID_OPTION",
    );
  }
});
