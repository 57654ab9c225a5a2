  // Start of `main` of every flash kernel, included by `// @include flash_item`: the work item
  // of this workgroup and the thread's place (rg, cg) in the RG x CG grid. Needs flash_io.
  // Linearised 2-D dispatch (see Kernel.dispatch): uniform, so returning is safe.
  let wg = wid.x + wid.y * nwg.x;
  if (wg >= params.items * params.nbh) {
    return;
  }
  let it = work_item(wg);
  let bh = it.bh;
  let tile = it.tile;
  let row_start = it.row_start;
  let rows = it.rows;
  let head_off = it.head_off;

  let cg = lid % CG;
  let rg = lid / CG;
