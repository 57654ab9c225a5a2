// The planner (asm/plan.ts via src/plan.ts) against independent TypeScript computations
// written from the definitions in CONTEXT.md. Uses the debug build of asm/ (assertions on).
import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import {
  buildPlan,
  densePlan,
  maskToSchedule,
  selectMask,
  usePlannerBuild,
  workItems,
} from "../src/plan.ts";
import type { Geometry, Plan } from "../src/types.ts";
import { TEXT_TILE } from "../src/validate.ts";

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
