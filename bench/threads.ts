/**
 * Thread scaling of the WebAssembly backend: dense attention at headDim 64 and 128 and the
 * `wasm-16k` draft shape (sparsity 0.9) on 1, 2, ... threads, every thread count measured in
 * turn within each repetition (so that a change of machine load hits them alike), best time
 * kept. Prints GFLOP/s, GFLOP/s per thread and the speedup over one thread.
 *
 * `deno run -A bench/threads.ts [--threads 1,2,4] [--reps 3] [--quick]`
 */
import { parseArgs } from "node:util";
import { openRuntime, type Runtime } from "../mod.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "" },
    reps: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
  },
});
const cores = navigator.hardwareConcurrency;
const counts = args.threads
  ? args.threads.split(",").map(Number)
  : [...new Set([1, 2, Math.min(4, cores), cores])].filter((t) => t <= cores);
const reps = Number(args.reps);

interface Case {
  name: string;
  tokens: number;
  heads: number;
  headDim: number;
  draft?: { frames: number; height: number; width: number; sparsity: number };
}
const CASES: Case[] = [
  { name: "dense 4096 x 2 heads, D 64", tokens: 4096, heads: 2, headDim: 64 },
  { name: "dense 4096 x 1 head, D 128", tokens: 4096, heads: 1, headDim: 128 },
  ...(args.quick ? [] : [
    { name: "dense wasm-16k (16384, D 64)", tokens: 16384, heads: 1, headDim: 64 },
    {
      name: "draft wasm-16k, sparsity 0.9",
      tokens: 16384,
      heads: 1,
      headDim: 64,
      draft: { frames: 8, height: 32, width: 64, sparsity: 0.9 },
    },
  ]),
];

function random(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = (s / 2 ** 32 - 0.5) * 2;
  }
  return x;
}

const load = () => Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
console.log(`${cores} cores; threads ${counts.join(", ")}; load average before: ${load()}`);
const runtimes = new Map<number, Runtime>();
for (const t of counts) runtimes.set(t, await openRuntime({ backend: "wasm", threads: t }));
console.log("| case | threads | ms | GFLOP/s | per thread | speedup |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const c of CASES) {
  const n = c.tokens * c.heads * c.headDim;
  const q = random(n, 1), k = random(n, 2), v = random(n, 3);
  const flops = 4 * c.heads * c.tokens * c.tokens * c.headDim;
  const ops = counts.map((t) => {
    const rt = runtimes.get(t)!;
    return c.draft
      ? rt.draftAttention({ ...c.draft, heads: c.heads, headDim: c.headDim })
      : rt.attention({ tokens: c.tokens, heads: c.heads, headDim: c.headDim });
  });
  for (const op of ops) await op.run(q, k, v); // warm-up: workers, tier-up, memory
  const best = counts.map(() => Infinity);
  for (let r = 0; r < reps; r++) {
    for (const [i, op] of ops.entries()) {
      const t0 = performance.now();
      await op.run(q, k, v);
      best[i] = Math.min(best[i], performance.now() - t0);
    }
  }
  for (const [i, t] of counts.entries()) {
    const g = flops / best[i] / 1e6;
    console.log(
      `| ${c.name} | ${t} | ${best[i].toFixed(1)} | ${g.toFixed(1)}${c.draft ? " (eff.)" : ""} | ` +
        `${(g / t).toFixed(1)} | ${(best[0] / best[i]).toFixed(2)}x |`,
    );
  }
  for (const op of ops) op.dispose();
}
for (const rt of runtimes.values()) rt.dispose();
console.log(`load average after: ${load()}`);
