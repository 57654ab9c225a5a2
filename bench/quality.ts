/**
 * `deno run -A bench/quality.ts`: block-selection quality on the photo workload family, through
 * the public API, compared at equal kept token pairs.
 *
 * For every regime (flat / moderate / sharp: ~4,000 / ~300 / ~50 effective keys), window shape
 * (even / ragged), sparsity (0.75, 0.9) and policy/estimator, the op runs on the chosen backend
 * (WebAssembly by default, the exact reference), its mask is read back, and the table shows the
 * true attention mass the mask keeps (float64 dense pass, src/metrics.ts) divided by the most any
 * selection of as many video token pairs could keep (`oracleRecallAtPairs`), the mean and the
 * smallest over heads, and the kept token pairs as a share of all video pairs. Comparing at equal
 * token pairs (not blocks) is the point: with ragged windows a selection of larger blocks holds
 * more pairs, so block-count density flatters estimators that pick full windows.
 *
 * `--variants a,b` picks variants (`policy/estimator[/samples][/tokens][/tauT]`), `--regimes`,
 * `--shapes`, `--sparsity` narrow the sweep, `--json` prints one JSON object.
 */
import { parseArgs } from "node:util";
import { openRuntime } from "../mod.ts";
import {
  type DenseStats,
  denseStats,
  maskPairs,
  maskRecall,
  oracleRecallAtPairs,
} from "../src/metrics.ts";
import type { DraftAttentionOptions } from "../src/types.ts";
import { generateWorkload, PHOTO_GEOMETRIES, PHOTO_REGIMES } from "../src/workload.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "wasm" },
    variants: { type: "string", default: "" },
    regimes: { type: "string", default: "flat,moderate,sharp" },
    shapes: { type: "string", default: "even,ragged" },
    sparsity: { type: "string", default: "0.75,0.9" },
    seed: { type: "string", default: "11" },
    json: { type: "boolean", default: false },
  },
});

const DEFAULT_VARIANTS = [
  "percentile/draft",
  "rowTopK/draft",
  "rowMass/draft",
  "percentile/sampled/8",
  "percentile/sampled/16",
  "rowTopK/sampled/8",
  "percentile/hybrid/8",
];

/** `policy/estimator[/samples][/tokens]` -> the op's options. */
function variant(name: string): Partial<DraftAttentionOptions> {
  const [policy, estimator, ...rest] = name.split("/");
  const o: Record<string, unknown> = { policy, estimator };
  for (const x of rest) {
    if (x === "tokens") o.budget = "tokens";
    else if (/^\d+$/.test(x)) o.samples = Number(x);
    else if (/^tau[\d.]+$/.test(x)) o.tau = Number(x.slice(3));
    else throw new Error(`unknown variant part "${x}" in "${name}"`);
  }
  return o as Partial<DraftAttentionOptions>;
}

const variants = args.variants ? args.variants.split(",") : DEFAULT_VARIANTS;
const regimes = args.regimes.split(",") as (keyof typeof PHOTO_REGIMES)[];
const shapes = args.shapes.split(",") as (keyof typeof PHOTO_GEOMETRIES)[];
const sparsities = args.sparsity.split(",").map(Number);
const seed = Number(args.seed);

const rt = await openRuntime({ backend: args.backend as "wasm" | "webgpu" | "auto" });
console.error(`# ${rt.describe().backend}`);
interface Row {
  regime: string;
  shape: string;
  sparsity: number;
  variant: string;
  /** Kept mass / oracle's at equal token pairs: mean and min over heads. */
  ofOracle: number;
  ofOracleMin: number;
  recall: number;
  /** Kept video token pairs / all video token pairs. */
  pairs: number;
}
const rows: Row[] = [];
for (const shape of shapes) {
  for (const regime of regimes) {
    const geo = PHOTO_GEOMETRIES[shape];
    const w = generateWorkload({
      ...geo,
      seed,
      concentration: PHOTO_REGIMES[regime],
      scene: "photo",
    });
    const t0 = performance.now();
    const stats: DenseStats = denseStats(w.q, w.k, w);
    console.error(`# ${shape} ${regime}: dense stats ${(performance.now() - t0).toFixed(0)} ms`);
    const video = geo.frames * geo.height * geo.width;
    for (const sparsity of sparsities) {
      for (const name of variants) {
        const op = rt.draftAttention({ ...geo, sparsity, ...variant(name) });
        await op.run(w.q, w.k, w.v);
        const { mask } = await op.lastMask();
        op.dispose();
        const rec = maskRecall(stats, mask);
        const pairs = maskPairs(stats, mask);
        const orc = oracleRecallAtPairs(stats, pairs);
        let mean = 0, min = Infinity, share = 0;
        for (let h = 0; h < rec.perHead.length; h++) {
          const r = rec.perHead[h] / orc.perHead[h];
          mean += r / rec.perHead.length;
          min = Math.min(min, r);
          share += pairs[h] / (video * video) / rec.perHead.length;
        }
        const row = {
          regime,
          shape,
          sparsity,
          variant: name,
          ofOracle: mean,
          ofOracleMin: min,
          recall: rec.mean,
          pairs: share,
        };
        rows.push(row);
        if (!args.json) {
          console.log(
            [
              shape.padEnd(6),
              regime.padEnd(8),
              sparsity.toFixed(2),
              name.padEnd(24),
              mean.toFixed(3),
              min.toFixed(3),
              rec.mean.toFixed(3),
              share.toFixed(3),
            ].join("  "),
          );
        }
      }
    }
  }
}
rt.dispose();
if (args.json) console.log(JSON.stringify({ seed, rows }, null, 1));
