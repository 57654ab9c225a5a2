// deno-fmt-ignore-file: deno fmt drops AssemblyScript's @inline decorators.
// Bump allocator over the exported linear memory. The host (src/plan.ts, src/wasm/backend.ts)
// allocates every buffer of a call with `alloc`, passes raw pointers, reads the results back and
// calls `reset`. Nothing in asm/ allocates managed objects, so the stub runtime stays unused.

/** Alignment of every allocation: one cache line, so v128 loads never straddle lines. */
@inline const ALIGN: usize = 64;

let top: usize = 0;

function base(): usize {
  return (__heap_base + ALIGN - 1) & ~(ALIGN - 1);
}

/**
 * Returns `bytes` bytes of memory (not cleared: it may hold data from before a `reset`) aligned to 64 bytes, growing the memory as needed,
 * or 0 when the memory cannot grow that far (4 GiB or the engine's limit).
 */
export function alloc(bytes: usize): usize {
  if (top == 0) top = base();
  const ptr = (top + ALIGN - 1) & ~(ALIGN - 1);
  const end = <u64>ptr + <u64>bytes;
  if (end > 0x1_0000_0000) return 0;
  const have = <u64>memory.size() << 16;
  if (end > have) {
    const pages = <i32>((end - have + 0xffff) >> 16);
    if (memory.grow(pages) < 0) return 0;
  }
  top = <usize>end;
  return ptr;
}

/** Frees every allocation at once. */
export function reset(): void {
  top = base();
}
