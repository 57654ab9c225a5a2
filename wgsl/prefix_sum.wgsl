// Workgroup inclusive prefix sum over `scan`, included by `// @include prefix_sum` (see
// src/webgpu/specialize.ts; wgsl/select_pick.wgsl, and wgsl/list_compact.wgsl). Needs `WG`.

var<workgroup> scan: array<u32, WG>;

/** scan[0 .. WG) -> its inclusive prefix sums, in place; the whole workgroup calls it. */
fn prefix_sum(lid: u32) {
  for (var stride = 1u; stride < WG; stride *= 2u) {
    var x = scan[lid];
    if (lid >= stride) {
      x += scan[lid - stride];
    }
    workgroupBarrier();
    scan[lid] = x;
    workgroupBarrier();
  }
}
