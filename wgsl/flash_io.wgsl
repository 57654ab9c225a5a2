// Interface of the flash kernels (wgsl/flash_tiled.wgsl, wgsl/flash_subgroup.wgsl,
// wgsl/flash_chunked.wgsl), included by `// @include flash_io` (see src/webgpu/specialize.ts):
// parameters, bindings, the table lookups and the block-list iterator. Needs `Store4`
// (`// @include storage`) and the kernel's `BC` (keys per chunk).

/** Mirrored by FLASH_PARAMS in src/webgpu/kernels.ts. */
struct Params {
  items: u32,
  nbh: u32,
  heads_per_row: u32,
  tokens: u32,
  s_b: u32,
  s_t: u32,
  s_h: u32,
  base_q: u32,
  base_k: u32,
  base_v: u32,
  base_o: u32,
  tiles: u32,
  dense: u32,
  scale_log2: f32,
  tiles_at: u32,
  items_at: u32,
  /** Work items per pair dispatched ahead of all others: the text query tiles (dense rows). */
  lead: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<Store4>;
@group(0) @binding(2) var<storage, read> k: array<Store4>;
@group(0) @binding(3) var<storage, read> v: array<Store4>;
@group(0) @binding(4) var<storage, read_write> out: array<Store4>;
/**
 * Static tables of the op in one buffer (WebGPU's default limit is 8 storage buffers per
 * stage): order[tokens] at 0 (sparse mode only), the tile table (start, len) pairs at tiles_at,
 * the work items (tile, rowStart, rows) at items_at.
 */
@group(0) @binding(5) var<storage, read> table: array<u32>;
@group(0) @binding(6) var<storage, read> counts: array<u32>;
@group(0) @binding(7) var<storage, read> lists: array<u32>;

/**
 * 1: the pipeline serves a dense op only (set by the host): dense mode is then known when the
 * shader is compiled, and the block-list and token-order lookups fold away. 0: `params.dense`
 * decides at run time.
 */
const DENSE: u32 = 0u;

/** Whether this dispatch runs dense attention (every query over every key, identity order). */
fn dense_mode() -> bool {
  return DENSE != 0u || params.dense != 0u;
}

/** Raster token of window-order position `p` (identity in dense mode). */
fn token_of(p: u32) -> u32 {
  if (dense_mode()) {
    return p;
  }
  return table[p];
}

/** (start, len) of tile `t`, in window-order positions. */
fn tile_of(t: u32) -> vec2<u32> {
  return vec2<u32>(table[params.tiles_at + 2u * t], table[params.tiles_at + 2u * t + 1u]);
}

/** Work item `item` of pair `bh` of the piece: its block-list tile, rows and head offset. */
struct Item {
  /** Pair of the piece (its block lists are rows bh * tiles + tile). */
  bh: u32,
  tile: u32,
  row_start: u32,
  rows: u32,
  /** Element offset of the pair's head inside q/k/v/out (before the tensor's base). */
  head_off: u32,
}

/**
 * Decodes workgroup `wg` (< items * nbh). The last `lead` items of each pair (text query tiles,
 * which visit every key tile) come first, all pairs' in turn: the longest items start early
 * instead of running alone at the end of the dispatch. The other items follow pair by pair.
 */
fn work_item(wg: u32) -> Item {
  let lead = params.lead;
  let ahead = lead * params.nbh;
  var item: u32;
  var bh: u32;
  if (wg < ahead) {
    item = params.items - lead + wg % lead;
    bh = wg / lead;
  } else {
    let rest = params.items - lead;
    item = (wg - ahead) % rest;
    bh = (wg - ahead) / rest;
  }
  let at = params.items_at + 3u * item;
  let head_off = (bh / params.heads_per_row) * params.s_b + (bh % params.heads_per_row) * params.s_h;
  return Item(bh, table[at], table[at + 1u], table[at + 2u], head_off);
}

/** A chunk of keys [c0, c0 + kc) of the run ending at run_e; li = next block-list index. */
struct Chunk {
  c0: u32,
  kc: u32,
  run_e: u32,
  li: u32,
}

/**
 * The block-list iterator of every flash kernel: the chunk after `c` (start from
 * `Chunk(0u, 0u, 0u, 0u)`), i.e. the next BC keys of its run, else the first chunk of the next
 * run; kc = 0 when done. In dense mode the one run is [0, tokens); in sparse mode a run is a
 * listed key tile, consecutive tiles (tile j+1 starting where tile j ends) merged. `count` and
 * `list_base`: the length and start of the work item's block list (1 and 0 in dense mode).
 */
fn next_chunk(c: Chunk, count: u32, list_base: u32) -> Chunk {
  var n = c;
  n.c0 = c.c0 + c.kc;
  if (n.c0 >= n.run_e) {
    if (n.li >= count) {
      n.kc = 0u;
      return n;
    }
    if (dense_mode()) {
      n.c0 = 0u;
      n.run_e = params.tokens;
      n.li = count;
    } else {
      let t0 = tile_of(lists[list_base + n.li]);
      n.c0 = t0.x;
      n.run_e = t0.x + t0.y;
      n.li++;
      while (n.li < count) {
        let tn = tile_of(lists[list_base + n.li]);
        if (tn.x != n.run_e) {
          break;
        }
        n.run_e += tn.y;
        n.li++;
      }
    }
  }
  n.kc = min(BC, n.run_e - n.c0);
  return n;
}

/** Raster token of row `j` of chunk `c` (0 past the chunk). */
fn chunk_token(c: Chunk, j: u32) -> u32 {
  var t = 0u;
  if (j < c.kc) {
    t = token_of(c.c0 + j);
  }
  return t;
}
