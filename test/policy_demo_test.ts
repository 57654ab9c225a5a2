/**
 * The demo's policy comparison (`--policies`, `--samples`, `--tau`, `--mask-every`): one row per
 * sparsity and policy/estimator with its costs and recall, and the flags' usage errors.
 */
import assert from "node:assert/strict";
import { demo } from "./_demo.ts";

Deno.test("demo: --policies all compares every selection against the oracle", async () => {
  const r = await demo([
    "--quick",
    "--json",
    "--backend",
    "wasm",
    "--runs",
    "1",
    "--sparsity",
    "0.75,0.9",
    "--policies",
    "all",
    "--samples",
    "4",
    "--mask-every",
    "5",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.workload.maskEvery, 5);
  assert.ok(j.workload.sampledQueryShare > 0 && j.workload.sampledQueryShare < 0.1);
  assert.equal(j.rows.length, 2 * 12);
  const seen = new Set<string>();
  for (const row of j.rows) {
    seen.add(`${row.sparsity} ${row.policy}/${row.estimator}/${row.samples}/${row.budget}`);
    for (const f of ["ms", "attentionMs", "maskCost", "amortisedCost", "recallRatio"]) {
      assert.ok(Number.isFinite(row[f]), `${f}: ${row[f]}`);
    }
    assert.ok(Math.abs(row.amortisedCost - row.maskCost / 5) < 1e-12);
    assert.ok(row.recall <= row.oracleRecall + 1e-9);
    if (row.budget === "tokens") {
      // The token budget keeps what it was given, up to the row maxima it adds; rowMass may
      // stop rows early.
      const floor = row.policy === "rowMass" ? 0 : 1 - row.sparsity - 1e-9;
      assert.ok(row.pairs >= floor && row.pairs < 1 - row.sparsity + 0.02, `${row.pairs}`);
    }
    if (row.estimator === "sampled" && row.policy === "percentile") {
      // The sampled estimator nearly reaches the oracle on this workload.
      assert.ok(row.recallRatio >= 0.95, `${row.sparsity}: recall / oracle ${row.recallRatio}`);
    }
  }
  assert.equal(seen.size, 24);
});

Deno.test("demo: --policies, --tau, --samples and --mask-every usage errors exit 2", async () => {
  for (
    const [args, flag] of [
      [["--policies", "topk/draft"], "--policies"],
      [["--policies", "percentile/oracle"], "--policies"],
      [["--policies", "rowTopK/draft/tokens"], "--policies"],
      [["--policies", "percentile/draft/4"], "--policies"],
      [["--scene", "film"], "--scene"],
      [["--tau", "0"], "--tau"],
      [["--samples", "17"], "--samples"],
      [["--mask-every", "0"], "--mask-every"],
    ] as const
  ) {
    const r = await demo(["--quick", "--backend", "wasm", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(flag));
  }
});
