/**
 * Host <-> GPU transfer rates through Deno's WebGPU, the cost of `op.run(q, k, v)` on typed
 * arrays beyond the kernels: uploads by one `queue.writeBuffer` per tensor, by 16 MiB chunks, and
 * through a `MAP_WRITE` staging buffer with `copyBufferToBuffer`; readback through a `MAP_READ`
 * buffer (`mapAsync`, `getMappedRange`, copy out). Each row: MB, ms, GB/s (median of 3, after a
 * warm-up), synchronised with `onSubmittedWorkDone` / the map.
 *
 *   deno run -A bench/io.ts [--mb 778]
 */
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  args: Deno.args,
  options: { mb: { type: "string", default: "778" } },
});
const bytes = Math.floor(Number(args.mb) * 1e6 / 16) * 16;
const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: {
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  },
});
console.log(`adapter: ${adapter.info.description || adapter.info.vendor}; ${bytes / 1e6} MB`);
const U = GPUBufferUsage;
const dst = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_DST | U.COPY_SRC });
const host = new Uint8Array(bytes);
for (let i = 0; i < bytes; i += 4096) host[i] = i & 255;

async function time(what: string, fn: () => Promise<void>): Promise<void> {
  await fn();
  const ms: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  const m = ms.sort((a, b) => a - b)[1];
  console.log(
    `${what.padEnd(40)} ${m.toFixed(1).padStart(8)} ms ${(bytes / m / 1e6).toFixed(2)} GB/s`,
  );
}

await time("writeBuffer, whole", async () => {
  device.queue.writeBuffer(dst, 0, host);
  await device.queue.onSubmittedWorkDone();
});
for (const chunk of [4, 16, 64]) {
  await time(`writeBuffer, ${chunk} MiB chunks`, async () => {
    const step = chunk * 2 ** 20;
    for (let o = 0; o < bytes; o += step) {
      device.queue.writeBuffer(dst, o, host.subarray(o, Math.min(bytes, o + step)));
    }
    await device.queue.onSubmittedWorkDone();
  });
}
const stage = device.createBuffer({ size: bytes, usage: U.MAP_WRITE | U.COPY_SRC });
await time("MAP_WRITE staging + copy", async () => {
  await stage.mapAsync(GPUMapMode.WRITE);
  new Uint8Array(stage.getMappedRange()).set(host);
  stage.unmap();
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(stage, 0, dst, 0, bytes);
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
});
const read = device.createBuffer({ size: bytes, usage: U.MAP_READ | U.COPY_DST });
const out = new Uint8Array(bytes);
await time("copy + MAP_READ + copy out", async () => {
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(dst, 0, read, 0, bytes);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  out.set(new Uint8Array(read.getMappedRange()));
  read.unmap();
});
await time("copy + MAP_READ, 16 MiB ranges", async () => {
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(dst, 0, read, 0, bytes);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const step = 16 * 2 ** 20;
  for (let o = 0; o < bytes; o += step) {
    const n = Math.min(step, bytes - o);
    out.set(new Uint8Array(read.getMappedRange(o, n)), o);
  }
  read.unmap();
});
for (const b of [dst, stage, read]) b.destroy();
device.destroy();
