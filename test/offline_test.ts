// The runtime tasks need no npm package (GPU hosts are often air-gapped): nothing npm in
// deno.json, no node_modules install, and no npm module in the graph of any runtime entry. The
// last test runs `deno task demo --help` and `deno task bench --help` for real with an empty
// Deno cache and an npm registry that refuses connections.
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
/** Entry points that must run with no registry (bench/peers.ts and scripts/ need one). */
const RUNTIME_ENTRIES = ["mod.ts", "demo.ts", "cli.ts", "src/serve.ts", "bench/bench.ts"];

Deno.test("offline: deno.json has no npm import and installs no node_modules", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  assert.equal(config.nodeModulesDir, "none");
  // A lock file listing npm packages makes every run resolve them first.
  assert.equal(config.lock, false);
  assert.doesNotMatch(JSON.stringify(config.imports ?? {}), /npm:/);
  for (const [name, cmd] of Object.entries(config.tasks as Record<string, string>)) {
    if (/deno run .*--lock=deno\.lock/.test(cmd)) {
      assert.ok(["build", "test", "bench:peers", "bundle"].includes(name), name);
    }
  }
});

Deno.test("offline: no runtime entry imports an npm module", async () => {
  for (const entry of RUNTIME_ENTRIES) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT,
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: { specifier: string }[];
      npmPackages?: Record<string, unknown>;
    };
    const npm = graph.modules.map((m) => m.specifier).filter((s) => /^(npm|jsr|https?):/.test(s));
    assert.deepEqual(npm, [], `${entry} imports ${npm.join(", ")}`);
    assert.deepEqual(Object.keys(graph.npmPackages ?? {}), [], entry);
  }
});

Deno.test("offline: demo and bench start with an empty cache and no npm registry", async () => {
  const cache = await Deno.makeTempDir({ prefix: "draftattn-offline-" });
  try {
    for (const task of ["demo", "bench"]) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["task", task, "--help"],
        cwd: ROOT,
        env: {
          DENO_DIR: cache,
          // Port 9 (discard) on the loopback: any registry request fails at once.
          NPM_CONFIG_REGISTRY: "http://127.0.0.1:9/",
          NO_COLOR: "1",
        },
      }).output();
      const log = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `deno task ${task} --help:\n${log}`);
      assert.match(log, new RegExp(`deno task ${task} \\[`));
      assert.doesNotMatch(log, /Download|registry/i, log);
    }
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
