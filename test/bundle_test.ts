import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

/**
 * Runs inside a fresh `deno run` (and under Node: see below) in a directory that holds only the
 * bundle and this script (no deno.json, no node_modules, no repository). Computes dense
 * attention and draft attention in cases where the draft keeps every block (one window;
 * sparsity 0), so a 15-line float64 dense reference is the exact answer, and prints one JSON
 * line per backend.
 */
const CHECK = `
import { openRuntime, DraftAttentionError } from "./draftattn.js";

const argv = globalThis.Deno ? Deno.args : process.argv.slice(2);

function reference(q, k, v, n, h, d) {
  const out = new Float64Array(n * h * d);
  const s = new Float64Array(n);
  for (let hh = 0; hh < h; hh++) {
    for (let i = 0; i < n; i++) {
      let m = -Infinity;
      for (let j = 0; j < n; j++) {
        let dot = 0;
        for (let x = 0; x < d; x++) dot += q[(i * h + hh) * d + x] * k[(j * h + hh) * d + x];
        s[j] = dot / Math.sqrt(d);
        m = Math.max(m, s[j]);
      }
      let z = 0;
      for (let j = 0; j < n; j++) z += (s[j] = Math.exp(s[j] - m));
      for (let j = 0; j < n; j++) {
        for (let x = 0; x < d; x++) out[(i * h + hh) * d + x] += (s[j] / z) * v[(j * h + hh) * d + x];
      }
    }
  }
  return out;
}

const data = (n, seed) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.61 + seed));
const maxErr = (a, b) => a.reduce((e, x, i) => Math.max(e, Number.isNaN(x) ? Infinity : Math.abs(x - b[i])), 0);

for (const arg of argv) {
  // "wasm:2": two threads, so the worker source embedded in the bundle must run.
  const [backend, threads] = arg.split(":");
  let rt;
  try {
    rt = await openRuntime({ backend, threads: threads ? Number(threads) : undefined });
  } catch (e) {
    console.log(JSON.stringify({ backend, error: e instanceof DraftAttentionError ? e.code : String(e) }));
    continue;
  }
  const errors = {};
  const cases = {
    // One 8 x 16 window plus 5 text tokens: g = 1, so every block is kept at any sparsity.
    oneWindow: [133, 2, 8, { frames: 1, height: 8, width: 16, textTokens: 5, heads: 2, headDim: 8, sparsity: 0.9 }],
    // Ragged 4 x 4 windows over 2 x 5 x 9, sparsity 0: exactly dense.
    sparsity0: [90, 1, 16, { frames: 2, height: 5, width: 9, pool: [4, 4], heads: 1, headDim: 16, sparsity: 0 }],
    dense: [37, 3, 4, null],
  };
  // Big enough (2.7e8 FLOPs) to be shared between the threads.
  if (threads) cases.threads = [1024, 2, 32, null];
  for (const [name, [n, h, d, draft]] of Object.entries(cases)) {
    const q = data(n * h * d, 1), k = data(n * h * d, 2), v = data(n * h * d, 3);
    const op = draft ? rt.draftAttention(draft) : rt.attention({ tokens: n, heads: h, headDim: d });
    const out = await op.run(q, k, v);
    errors[name] = maxErr(out, reference(q, k, v, n, h, d));
    op.dispose();
  }
  const info = rt.describe();
  console.log(JSON.stringify({ backend, chosen: rt.backend, adapter: info.adapter, threads: info.threads, features: info.features, errors }));
  rt.dispose();
}
`;

/** The system node's version ("v20.20.2"), or undefined where there is none. */
async function systemNode(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("node", { args: ["--version"] }).output();
    return out.code === 0 ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

async function hasAdapter(): Promise<boolean> {
  try {
    return (await navigator.gpu?.requestAdapter()) != null;
  } catch {
    return false;
  }
}

/** Parses the CHECK script's lines and asserts every backend ran within tolerance. */
function checkLines(stdout: string, backends: string[], where: string): { features: string[] }[] {
  const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(lines.length, backends.length, `${where}: ${stdout}`);
  for (const line of lines) {
    assert.equal(line.error, undefined, `${where}: ${JSON.stringify(line)}`);
    assert.equal(line.chosen, line.backend);
    if (line.errors.threads !== undefined) assert.equal(line.threads, 2, JSON.stringify(line));
    for (const [name, err] of Object.entries(line.errors as Record<string, number>)) {
      assert.ok(err < 2e-5, `${where}: ${line.backend} ${name}: max error ${err}`);
    }
  }
  return lines;
}

/** Runs `cmd args` in `cwd`; fails the test with its output when it exits non-zero. */
async function exec(cmd: string, args: string[], cwd: string): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")}:\n${stdout}${stderr}`);
  return stdout;
}

/** A consumer that uses the declarations (and one line that they must reject). */
const CONSUMER = `
import { DraftAttentionError, openRuntime, type Runtime } from "./draftattn.js";
const rt: Runtime = await openRuntime({ backend: "wasm" });
const op = rt.attention({ tokens: 8, heads: 1, headDim: 4 });
const out: Float32Array | Float16Array = await op.run(new Float32Array(32), new Float32Array(32), new Float32Array(32));
console.log(out.length, DraftAttentionError.name);
`;

Deno.test("bundle: one minified file under 300 KiB with its .d.ts runs alone in a fresh Deno and in Node", async () => {
  const dir = await Deno.makeTempDir({ prefix: "draftattn-bundle-" });
  try {
    const outfile = `${dir}/build/draftattn.js`;
    const build = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--lock=deno.lock", "scripts/bundle.ts", "--outfile", outfile],
      cwd: new URL(ROOT).pathname,
      env: { NO_COLOR: "1" },
    }).output();
    const log = new TextDecoder().decode(build.stdout) + new TextDecoder().decode(build.stderr);
    assert.equal(build.code, 0, log);
    assert.match(log, /bundle: .*draftattn\.js \d+ bytes/);
    const size = (await Deno.stat(outfile)).size;
    assert.ok(size < 300 * 1024, `bundle is ${size} bytes`);
    const text = await Deno.readTextFile(outfile);
    assert.doesNotMatch(text, /^\s*import\s/m, "the bundle imports nothing");
    assert.ok(!text.includes("models/"), "model JSON is inlined, not imported");

    assert.match(text, /^\/\/ @ts-self-types="\.\/draftattn\.d\.ts"\n/);

    const run = `${dir}/run`;
    await Deno.mkdir(run);
    await Deno.copyFile(outfile, `${run}/draftattn.js`);
    await Deno.copyFile(`${dir}/build/draftattn.d.ts`, `${run}/draftattn.d.ts`);
    await Deno.writeTextFile(`${run}/check.mjs`, CHECK);

    // The declarations: a correct consumer type-checks, a wrong argument type does not.
    await Deno.writeTextFile(`${run}/consumer.ts`, CONSUMER);
    await Deno.writeTextFile(
      `${run}/wrong.ts`,
      CONSUMER.replace("tokens: 8,", `tokens: "8",`),
    );
    await exec(Deno.execPath(), ["check", "--no-config", "--no-lock", "consumer.ts"], run);
    const wrong = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--no-config", "--no-lock", "wrong.ts"],
      cwd: run,
      env: { NO_COLOR: "1" },
    }).output();
    assert.notEqual(wrong.code, 0, "a string for `tokens` must fail type checking");
    assert.match(new TextDecoder().decode(wrong.stderr), /TS2322/);

    const backends = ["wasm", "wasm:2", ...(await hasAdapter()) ? ["webgpu"] : []];
    // No config, no lock file, no npm, no remote imports, no permissions.
    const flags = ["--no-config", "--no-lock", "--no-npm", "--no-remote"];
    const deno = await exec(Deno.execPath(), ["run", ...flags, "check.mjs", ...backends], run);
    const [denoWasm] = checkLines(deno, backends, "deno");
    assert.ok(denoWasm.features.includes("relaxed-simd"), JSON.stringify(denoWasm));

    // Node 22 from npm (CI reaches the registry; without it this fails rather than skips). Node
    // has no WebGPU and no global Worker: one thread of WebAssembly, relaxed SIMD (V8 12.4).
    const node22 = await exec("npx", ["-y", "node@22", "check.mjs", "wasm"], run);
    const [n22] = checkLines(node22, ["wasm"], "node 22");
    assert.ok(n22.features.includes("relaxed-simd"), JSON.stringify(n22));

    // The system Node, where there is one: Node 20's V8 (11.3) lacks relaxed SIMD, so there the
    // bundle must pick its plain-SIMD build by itself.
    const system = await systemNode();
    if (system) {
      const lines = checkLines(
        await exec("node", ["check.mjs", "wasm"], run),
        ["wasm"],
        `node ${system}`,
      );
      console.log(`  node ${system}: features ${lines[0].features.join(", ")}`);
      if (Number(system.slice(1).split(".")[0]) < 21) {
        assert.ok(!lines[0].features.includes("relaxed-simd"), JSON.stringify(lines[0]));
      }
    } else {
      console.log("  no system node on PATH: only Node 22 from npm ran");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
