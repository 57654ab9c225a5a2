/**
 * draftattn: DraftAttention (arXiv 2505.14708) for video diffusion transformers on WebGPU and
 * WebAssembly, at any resolution.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openRuntime } from "./mod.ts";
 * const rt = await openRuntime({ backend: "wasm" });
 * const op = rt.draftAttention({ frames: 2, height: 8, width: 16, heads: 1, headDim: 32 });
 * const n = 2 * 8 * 16 * 32;
 * const q = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
 * const out = await op.run(q, q, q);
 * assert.equal(out.length, n);
 * rt.dispose();
 * ```
 *
 * @module
 */
export { openRuntime } from "./src/runtime.ts";
export type { AttentionOp, DraftAttentionOp, Runtime, RuntimeOptions } from "./src/runtime.ts";
export { DraftAttentionError } from "./src/errors.ts";
export type { DraftAttentionErrorCode } from "./src/errors.ts";
export { keepCount } from "./src/validate.ts";
export { getModel, MODELS } from "./src/models.ts";
export type { ModelProfile } from "./src/models.ts";
export { createStepSchedule } from "./src/schedule.ts";
export type { StepQuery, StepSchedule, StepScheduleOptions } from "./src/schedule.ts";
export type {
  AttentionOptions,
  BackendInfo,
  BackendKind,
  Budget,
  DenseSpec,
  DraftAttentionOptions,
  DraftSpec,
  DType,
  Estimator,
  Geometry,
  GpuRunArgs,
  Layout,
  MaskConfig,
  MaskResult,
  Policy,
  Precision,
  RunOptions,
  TensorArray,
  TextPosition,
} from "./src/types.ts";
export { encodeNpy, parseNpy } from "./src/npy.ts";
export type { ParseNpyOptions } from "./src/npy.ts";
export { encodeSafetensors, parseSafetensors } from "./src/safetensors.ts";
export type { ParseSafetensorsOptions, SafetensorsFile } from "./src/safetensors.ts";
export type { Tensor } from "./src/_tensor.ts";
export { CONCENTRATION_LEVELS, generateWorkload } from "./src/workload.ts";
export type { ConcentrationLevel, Workload, WorkloadOptions } from "./src/workload.ts";
export { compareOutputs, denseStats, maskRecall, oracleRecall } from "./src/metrics.ts";
export { maskPairs, oracleRecallAtPairs } from "./src/metrics.ts";
export { PHOTO_GEOMETRIES, PHOTO_REGIMES } from "./src/workload.ts";
export type { SceneKind } from "./src/workload.ts";
export type {
  AttentionShape,
  DenseStats,
  DenseStatsOptions,
  OutputError,
  Recall,
} from "./src/metrics.ts";
