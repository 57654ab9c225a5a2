/**
 * The demo's result types and its text table (demo/main.ts computes them).
 *
 * @module
 */
import type { Budget, DType, Estimator, Layout, Policy, TextPosition } from "../src/types.ts";

/** Queued runs per timing sample on WebGPU. */
export const GPU_REPS = 4;

/** One row of the result table. */
export interface DemoRow {
  sparsity: number;
  policy: Policy;
  estimator: Estimator;
  /** Query samples per block (sampled and hybrid estimators), else null. */
  samples: number | null;
  /** What sparsity budgets: blocks (the reference) or video token pairs. */
  budget: Budget;
  /** Kept video token pairs / all video token pairs, mean over (batch, head). */
  pairs: number | null;
  /** Kept video block pairs / all, over batch and heads. */
  density: number;
  /** Median time of a run that computes its mask, ms. */
  ms: number;
  /** Median time of a run that reuses its mask (`maskEvery`): the sparse attention alone, ms. */
  attentionMs: number;
  /** Mask cost over the sparse attention alone, `ms / attentionMs - 1`, mask every run. */
  maskCost: number;
  /** The same amortised over `maskEvery` runs (one computes the mask, the others reuse it). */
  amortisedCost: number;
  /** Dense time / this time. */
  speedup: number;
  relL2: number;
  cosine: number;
  /** dB; `null` in JSON when the outputs are identical (infinite). */
  psnr: number;
  maxAbsError: number;
  /** Mask recall, mean and worst over (batch, head); `null` with `--no-reference`. */
  recall: number | null;
  recallMin: number | null;
  /**
   * Oracle recall at the same kept video token pairs per (batch, head) (`oracleRecallAtPairs`):
   * with ragged windows a block count flatters selections of full windows, token pairs do not.
   */
  oracleRecall: number | null;
  /** Oracle recall at the same number of kept blocks (the comparison before token pairs). */
  oracleRecallBlocks: number | null;
  /** `recall / oracleRecall` (means). */
  recallRatio: number | null;
  oracleRecallMin: number | null;
  /** `[batch * heads]` mask and oracle recall per head. */
  recallPerHead: number[] | null;
  oracleRecallPerHead: number[] | null;
}

/** The demo's result: what `--json` prints. */
export interface DemoResult {
  backend: string;
  adapter: string;
  reason: string;
  features: string[];
  workload: {
    model: string | null;
    scale: number;
    frames: number;
    height: number;
    width: number;
    textTokens: number;
    textPosition: TextPosition;
    pool: [number, number];
    batch: number;
    heads: number;
    headDim: number;
    dtype: DType;
    layout: Layout;
    tokens: number;
    g: number;
    concentration: number;
    /** `--scene`: what the workload renders. */
    scene: "shapes" | "photo";
    seed: number;
    /**
     * Sampled query rows of the sampled estimator over all query rows: its share of dense
     * attention's `QK^T` work (null when no variant samples).
     */
    sampledQueryShare: number | null;
    /** Runs per mask computation assumed by `amortisedCost`. */
    maskEvery: number;
    /** Mean over (batch, head) of the mean `exp(row entropy)` of the dense video rows. */
    effectiveKeys: number | null;
    effectiveKeysPerHead: number[] | null;
    archetypes: string[];
  };
  dense: { ms: number; times: number[] };
  rows: DemoRow[];
  seconds: { generate: number; reference: number; total: number };
}

/** `policy/estimator[/samples][/tokens]`, as `--policies` takes it. */
export function variantName(
  v: { policy: Policy; estimator: Estimator; samples: number | null; budget: Budget },
): string {
  return `${v.policy}/${v.estimator}${v.samples === null ? "" : `/${v.samples}`}` +
    (v.budget === "tokens" ? "/tokens" : "");
}

function pad(s: string, n: number): string {
  return s.padStart(n);
}

function effectiveKeysLine(perHead: number[] | null, archetypes: string[], tokens: number): string {
  if (perHead === null) return `          effective keys per query: not measured (--no-reference)`;
  const mean = perHead.reduce((a, b) => a + b, 0) / perHead.length;
  const heads = perHead.slice(0, 8).map((x, i) =>
    `${x.toFixed(0)} ${archetypes[i % archetypes.length]}`
  );
  return `          effective keys per query ${mean.toFixed(1)} of ${tokens} (per head: ` +
    `${heads.join(", ")}${perHead.length > 8 ? ", ..." : ""})`;
}

/** The human-readable report. */
export function formatTable(r: DemoResult): string {
  const w = r.workload;
  const lines = [
    `backend   ${r.backend} (${r.adapter})`,
    `why       ${r.reason}`,
    `features  ${r.features.join(", ") || "-"}`,
    `workload  ${w.model ? `${w.model} x${+w.scale.toFixed(3)}: ` : ""}batch ${w.batch}, ` +
    `${w.frames}x${w.height}x${w.width} latent${
      w.textTokens ? ` + ${w.textTokens} text (${w.textPosition})` : ""
    } = ${w.tokens} tokens, ${w.heads} heads x ${w.headDim}, ${w.dtype} ${w.layout}`,
    `          windows ${w.pool[0]}x${
      w.pool[1]
    } -> g = ${w.g} blocks; concentration ${w.concentration}, ` +
    `seed ${w.seed}`,
    effectiveKeysLine(w.effectiveKeysPerHead, w.archetypes, w.tokens),
    ...(w.sampledQueryShare === null ? [] : [
      `          sampled estimator: ${(100 * w.sampledQueryShare).toFixed(1)}% of the query ` +
      `rows attend to every key (that share of dense QK^T work)`,
    ]),
    "",
  ];
  const header = [
    pad("sparsity", 8),
    pad("policy/estimator", 26),
    pad("density", 7),
    pad("time ms", 9),
    pad("attn ms", 9),
    pad("mask+", 7),
    pad(`mask+/${w.maskEvery}`, 8),
    pad("speedup", 7),
    pad("rel-L2", 7),
    pad("PSNR dB", 7),
    pad("recall", 6),
    pad("oracle", 6),
    pad("rec/orc", 7),
  ];
  lines.push(header.join("  "));
  lines.push(
    [
      pad("dense", 8),
      pad("-", 26),
      pad("1.000", 7),
      pad(r.dense.ms.toFixed(1), 9),
      pad("-", 9),
      pad("-", 7),
      pad("-", 8),
      pad("1.00x", 7),
      pad("-", 7),
      pad("-", 7),
      pad("-", 6),
      pad("-", 6),
      pad("-", 7),
    ].join("  "),
  );
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  for (const row of r.rows) {
    lines.push(
      [
        pad(row.sparsity.toFixed(2), 8),
        pad(variantName(row), 26),
        pad(row.density.toFixed(3), 7),
        pad(row.ms.toFixed(1), 9),
        pad(row.attentionMs.toFixed(1), 9),
        pad(pct(row.maskCost), 7),
        pad(pct(row.amortisedCost), 8),
        pad(`${row.speedup.toFixed(2)}x`, 7),
        pad(row.relL2.toFixed(4), 7),
        pad(Number.isFinite(row.psnr) ? row.psnr.toFixed(1) : "inf", 7),
        pad(row.recall?.toFixed(3) ?? "-", 6),
        pad(row.oracleRecall?.toFixed(3) ?? "-", 6),
        pad(row.recallRatio?.toFixed(3) ?? "-", 7),
      ].join("  "),
    );
  }
  lines.push(
    "",
    "time: a run that computes its mask; attn: a run that reuses it (the sparse attention alone);",
    `mask+: time / attn - 1, the mask's extra cost; mask+/${w.maskEvery}: the same amortised ` +
      `with the mask recomputed every ${w.maskEvery} runs (maskEvery).`,
    "rel-L2, PSNR (peak = max |dense|): draft output vs dense output of the same backend.",
    "recall: share of the dense attention mass (video queries -> video keys) inside the kept",
    "blocks, mean over heads; oracle: the most any selection of as many video token pairs could",
    "keep (blocks by true mass per pair); rec/orc: recall / oracle. /N: samples; /tokens: budget",
    '"tokens" (sparsity counts video token pairs instead of blocks).',
    ...(r.backend === "webgpu"
      ? [
        `webgpu times: runs on GPU buffers (no upload or readback), each sample the mean of ` +
        `${GPU_REPS} queued runs.`,
      ]
      : []),
    `times: median of ${r.dense.times.length} runs after a warm-up; float64 reference ` +
      `${r.seconds.reference.toFixed(1)} s; total ${r.seconds.total.toFixed(1)} s.`,
  );
  return lines.join("\n");
}
