/**
 * Stage timing of a WebGPU op (`WebGpuOp.profile`): the stages of a run, the timestamp queries
 * of a profiled run (two per recorded pass, one pass per stage) and their conversion to
 * milliseconds. Ordinary runs record no query and never touch this module's buffers.
 *
 * @module
 */
import type { GpuContext } from "./context.ts";
import type { IoBuffer } from "./io.ts";

/** Stages of a run, in recording order (see {@linkcode StageTimes}). */
export const STAGES = ["pool", "map", "select", "lists", "attention"] as const;
/** One stage of a run. */
export type Stage = typeof STAGES[number];

/**
 * GPU time of each stage of one run in milliseconds, from `timestamp-query` (summed over
 * pieces; 0 for a stage the run did not record): `pool` the window means of Q and K, `map` the
 * draft map (or the sampled estimator), `select` the radix select (or a row policy, lists
 * included), `lists` the block lists, `attention` flash attention.
 */
export type StageTimes = Record<Stage, number>;

/** Timestamp queries of a profiled run: two per recorded pass. */
export interface Profiler {
  set: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
  /** The stage of each recorded pass. */
  stages: Stage[];
}

/**
 * A profiler's query set and buffers for `passes` timed passes (every pass of every piece: at
 * most four mask stages per mask group, then attention).
 */
export function makeProfiler(ctx: GpuContext, passes: number, ioBuffer: IoBuffer): Profiler {
  const count = 2 * passes;
  const U = GPUBufferUsage;
  const set = ctx.device.createQuerySet({ type: "timestamp", count });
  return {
    set,
    resolve: ioBuffer("timestamps", count * 8, U.QUERY_RESOLVE | U.COPY_SRC),
    read: ioBuffer("timestamps read", count * 8, U.MAP_READ | U.COPY_DST),
    stages: [],
  };
}

/** Begins the timed compute pass of stage `s`, its two timestamps next in `prof`'s set. */
export function beginTimedPass(
  enc: GPUCommandEncoder,
  prof: Profiler,
  s: Stage,
): GPUComputePassEncoder {
  const at = 2 * prof.stages.length;
  prof.stages.push(s);
  return enc.beginComputePass({
    label: `draftattn ${s}`,
    timestampWrites: {
      querySet: prof.set,
      beginningOfPassWriteIndex: at,
      endOfPassWriteIndex: at + 1,
    },
  });
}

/** Resolves the recorded timestamps and copies them to the mappable `read` buffer. */
export function resolveTimestamps(enc: GPUCommandEncoder, prof: Profiler): void {
  if (prof.stages.length) {
    const n = 2 * prof.stages.length;
    enc.resolveQuerySet(prof.set, 0, n, prof.resolve, 0);
    enc.copyBufferToBuffer(prof.resolve, 0, prof.read, 0, n * 8);
  }
}

/**
 * The stage times of a profiled run from its mapped `read` buffer (unmapped after). Ticks are
 * taken as nanoseconds (WebGPU's unit; NVIDIA and llvmpipe count in ns).
 */
export function stageTimes(prof: Profiler): StageTimes {
  const ticks = new BigInt64Array(prof.read.getMappedRange(0, prof.stages.length * 16));
  const times: StageTimes = { pool: 0, map: 0, select: 0, lists: 0, attention: 0 };
  prof.stages.forEach((stage, i) => {
    times[stage] += Math.max(0, Number(ticks[2 * i + 1] - ticks[2 * i])) / 1e6;
  });
  prof.read.unmap();
  return times;
}
