// Block-list rows from a kept predicate, included by `// @include list_compact` (see
// src/webgpu/specialize.ts; wgsl/select_lists.wgsl and wgsl/select_row.wgsl): the workgroup
// takes the video key tiles j < g in chunks of WG, one per invocation, and writes the kept ones
// ascending by stream compaction (a prefix sum of the kept flags), then the text tiles
// g .. tiles-1 and the row's count. Needs `WG` and the bindings `lists` and `counts`.

// @include prefix_sum

/**
 * One chunk: invocation `lid` holds candidate `j` and whether it is `kept`; the kept ones are
 * written in order from lists[at]. Returns how many were kept (uniform); the whole workgroup
 * calls it.
 */
fn compact(lid: u32, kept: bool, j: u32, at: u32) -> u32 {
  workgroupBarrier(); // everyone has read scan[WG - 1] of the previous chunk
  scan[lid] = select(0u, 1u, kept);
  workgroupBarrier();
  prefix_sum(lid);
  if (kept) {
    lists[at + scan[lid] - 1u] = j;
  }
  return workgroupUniformLoad(&scan[WG - 1u]);
}

/** Ends list row `row` (of `tiles` entries) after its `off` video tiles: text tiles, count. */
fn finish_list(lid: u32, row: u32, off: u32, g: u32, tiles: u32) {
  let text_tiles = tiles - g;
  for (var x = lid; x < text_tiles; x += WG) {
    lists[row * tiles + off + x] = g + x;
  }
  if (lid == 0u) {
    counts[row] = off + text_tiles;
  }
}
