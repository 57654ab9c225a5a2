import assert from "node:assert/strict";
import { demo } from "./_demo.ts";

Deno.test("demo: --quick --json on wasm reports finite, sensible numbers and writes PNGs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await demo([
      "--quick",
      "--json",
      "--backend",
      "wasm",
      "--sparsity",
      "0,0.5,0.9",
      "--png",
      dir,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /draft attention at sparsity 0.9/); // progress goes to stderr
    const j = JSON.parse(r.stdout);
    assert.equal(j.backend, "wasm");
    for (const f of ["adapter", "reason"]) assert.ok(typeof j[f] === "string" && j[f].length > 0);
    assert.ok(Array.isArray(j.features));
    const w = j.workload;
    assert.deepEqual([w.frames, w.height, w.width, w.heads, w.headDim], [4, 16, 32, 2, 32]);
    assert.equal(w.tokens, 2048);
    assert.equal(w.g, 16);
    assert.ok(w.effectiveKeys > 1 && w.effectiveKeys < w.tokens);
    assert.ok(j.dense.ms > 0 && Number.isFinite(j.dense.ms));
    assert.deepEqual(j.rows.map((x: { sparsity: number }) => x.sparsity), [0, 0.5, 0.9]);
    for (const row of j.rows) {
      for (
        const f of [
          "density",
          "ms",
          "speedup",
          "relL2",
          "cosine",
          "maxAbsError",
          "recall",
          "recallMin",
          "oracleRecall",
          "oracleRecallMin",
        ]
      ) {
        assert.ok(Number.isFinite(row[f]), `${f} at ${row.sparsity}: ${row[f]}`);
      }
      // PSNR is infinite (null in JSON) only for an output identical to dense.
      assert.ok(Number.isFinite(row.psnr) || (row.psnr === null && row.relL2 === 0));
      assert.ok(row.recall >= 0 && row.recall <= 1 + 1e-9);
      assert.ok(row.oracleRecall >= row.recall - 1e-9, `oracle >= recall at ${row.sparsity}`);
    }
    const [s0, s5, s9] = j.rows;
    assert.ok(s0.relL2 < 1e-5, `sparsity 0 is dense: rel-L2 ${s0.relL2}`);
    assert.ok(s0.density === 1 && Math.abs(s0.recall - 1) < 1e-9);
    assert.ok(s5.relL2 <= s9.relL2, `rel-L2 ${s5.relL2} at 0.5 vs ${s9.relL2} at 0.9`);
    assert.ok(s5.recall >= s9.recall && s5.density > s9.density);
    const pngs = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(pngs, [
      "draft_head0.png",
      "draft_head1.png",
      "error_sparsity0.5.png",
      "error_sparsity0.9.png",
      "error_sparsity0.png",
      "scene.png",
    ]);
    for (const name of pngs) {
      const bytes = await Deno.readFile(`${dir}/${name}`);
      assert.deepEqual([...bytes.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo: --help exits 0, a bad flag exits 2 with the flag named", async () => {
  const help = await demo(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--sparsity/);
  const bad = await demo(["--sparsity", "1.5"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--sparsity/);
  const unknown = await demo(["--model", "sora"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /sora/);
});

Deno.test("demo: a scaled-down profile with text before the video; --no-reference", async () => {
  const r = await demo([
    "--model",
    "cogvideox-5b",
    "--scale",
    "0.15",
    "--json",
    "--backend",
    "wasm",
    "--runs",
    "1",
    "--sparsity",
    "0.5",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  const w = j.workload;
  assert.equal(w.model, "cogvideox-5b");
  assert.deepEqual([w.frames, w.height, w.width, w.textTokens], [2, 5, 7, 226]);
  assert.equal(w.textPosition, "before");
  assert.equal(w.heads, 4);
  assert.equal(w.tokens, 2 * 5 * 7 + 226);
  const [row] = j.rows;
  assert.ok(row.relL2 >= 0 && row.recall > 0 && row.oracleRecall >= row.recall - 1e-9);

  const n = await demo(["--quick", "--json", "--backend", "wasm", "--runs", "1", "--no-reference"]);
  assert.equal(n.code, 0, n.stderr);
  const k = JSON.parse(n.stdout);
  assert.equal(k.workload.effectiveKeys, null);
  assert.ok(
    k.rows.every((x: { recall: null; relL2: number }) => x.recall === null && x.relL2 >= 0),
  );
});
