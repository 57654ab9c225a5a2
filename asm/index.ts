// Entry point of the draftattn WebAssembly module: planner and attention kernels.
export { alloc, reset } from "./memory";
export {
  kthLargestBits,
  maskToSchedule,
  planBuild,
  planPieces,
  selectMask,
  workItemCount,
  workItemsFill,
} from "./plan";
export {
  draftMap,
  flash,
  flashBlock,
  flashScratchBytes,
  gatherRows,
  packedKeyOffsets,
  packKeys,
  poolTiles,
  prepTiles,
} from "./attention";
export {
  rowMassBits,
  sampledMap,
  sampledScratchBytes,
  selectMaskTokens,
  selectRowMassTokens,
  selectRows,
  tokenThresholdBits,
} from "./selection";
