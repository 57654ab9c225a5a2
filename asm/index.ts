// Entry point of the draftattn WebAssembly module: planner and attention kernels.
export { alloc, reset } from "./memory";
export {
  kthLargestBits,
  maskToSchedule,
  planBuild,
  selectMask,
  workItemCount,
  workItemsFill,
} from "./plan";
export {
  draftMap,
  flash,
  flashScratchBytes,
  gatherRows,
  packedKeyOffsets,
  packKeys,
  poolTiles,
} from "./attention";
