import assert from "node:assert/strict";
import { encodeNpy, parseNpy } from "../src/npy.ts";
import { openRuntime } from "../src/runtime.ts";
import type { Tensor } from "../src/_tensor.ts";
import type { DType } from "../src/types.ts";

const CLI = new URL("../cli.ts", import.meta.url).href;

async function cli(args: string[], cwd?: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function tensor(dtype: DType, shape: number[], seed: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = Array.from({ length: n }, (_, i) => Math.cos(i * 0.29 + seed) * 0.7);
  return {
    dtype,
    shape,
    data: dtype === "f16" ? new Float16Array(values) : new Float32Array(values),
  };
}

async function writeQkv(dir: string, dtype: DType, shape: number[]): Promise<Tensor[]> {
  const ts = [1, 2, 3].map((s) => tensor(dtype, shape, s));
  for (const [i, name] of ["q", "k", "v"].entries()) {
    await Deno.writeFile(`${dir}/${name}.npy`, encodeNpy(ts[i]));
  }
  return ts;
}

Deno.test("cli: help, unknown commands and flags", async () => {
  const main = await cli(["--help"]);
  assert.equal(main.code, 0);
  assert.match(main.stdout, /commands:[\s\S]*info[\s\S]*run[\s\S]*bench[\s\S]*demo/);
  const run = await cli(["run", "--help"]);
  assert.equal(run.code, 0);
  assert.match(run.stdout, /--sparsity S/);
  const info = await cli(["info", "-h"]);
  assert.equal(info.code, 0);
  const bad = await cli(["frobnicate"]);
  assert.equal(bad.code, 2);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
  assert.match(bad.stderr, /^draftattn: unknown command "frobnicate"/);
  const flag = await cli(["run", "--nope"]);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /^draftattn: .*--nope/);
});

Deno.test("cli: run failures exit 1 with the error message on one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeQkv(dir, "f32", [1, 128, 1, 8]);
    const common = ["run", "--backend", "wasm", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy"];
    const cases: [string[], RegExp][] = [
      [
        [...common, "--out", "o.npy", "--frames", "1", "--height", "8", "--width", "15"],
        /^draftattn: Invalid q: .* has 128 tokens/,
      ],
      [
        [...common, "--out", "o.npy", "--model", "sora"],
        /^draftattn: Invalid model: "sora" is not a bundled profile/,
      ],
      [[
        ...common,
        "--out",
        "o.npy",
        "--frames",
        "1",
        "--height",
        "8",
        "--width",
        "16",
        "--sparsity",
        "x",
      ], /^draftattn: Invalid sparsity/],
      [[...common, "--frames", "1"], /^draftattn: Invalid --out: is required/],
      [[
        "run",
        "--backend",
        "wasm",
        "--q",
        "missing.npy",
        "--k",
        "k.npy",
        "--v",
        "v.npy",
        "--out",
        "o.npy",
      ], /^draftattn: Invalid missing\.npy: cannot be read/],
      [["run", "--backend", "gpu", "--out", "o.npy"], /^draftattn: Invalid backend/],
    ];
    await Deno.writeTextFile(`${dir}/bad.npy`, "\x93NUMPY garbage");
    cases.push([
      [
        "run",
        "--backend",
        "wasm",
        "--q",
        "bad.npy",
        "--k",
        "k.npy",
        "--v",
        "v.npy",
        "--out",
        "o.npy",
        "--dense",
      ],
      /^draftattn: Invalid bad\.npy: not a \.npy file/,
    ]);
    for (const [args, message] of cases) {
      const r = await cli(args, dir);
      assert.equal(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
      const last = r.stderr.trim().split("\n").at(-1)!;
      assert.match(last, message);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: run writes out.npy equal to runtime.run (draft f32, dense f16 BHSD)", async () => {
  const dir = await Deno.makeTempDir();
  const rt = await openRuntime({ backend: "wasm" });
  try {
    // Draft: 2 frames of 10 x 18 with 4 text tokens before the video, 2 heads of 8.
    const [q, k, v] = await writeQkv(dir, "f32", [1, 2 * 10 * 18 + 4, 2, 8]);
    const r = await cli([
      "run",
      "--backend",
      "wasm",
      "--q",
      "q.npy",
      "--k",
      "k.npy",
      "--v",
      "v.npy",
      "--out",
      "out.npy",
      "--frames",
      "2",
      "--height",
      "10",
      "--width",
      "18",
      "--text-tokens",
      "4",
      "--text-position",
      "before",
      "--pool",
      "4x8",
      "--sparsity",
      "0.6",
      "--json",
    ], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /read q\.npy/);
    const summary = JSON.parse(r.stdout);
    assert.equal(summary.backend, "wasm");
    assert.equal(summary.mode, "draft");
    assert.equal(summary.g, 2 * 3 * 3);
    const out = parseNpy(await Deno.readFile(`${dir}/out.npy`));
    const op = rt.draftAttention({
      frames: 2,
      height: 10,
      width: 18,
      textTokens: 4,
      textPosition: "before",
      heads: 2,
      headDim: 8,
      pool: [4, 8],
      sparsity: 0.6,
    });
    assert.deepEqual(out.data, await op.run(q.data, k.data, v.data));
    assert.equal(summary.density, (await op.lastMask()).density);
    op.dispose();

    // Dense, f16, BHSD [2, 3, 97, 4].
    const [hq, hk, hv] = await writeQkv(dir, "f16", [2, 3, 97, 4]);
    const d = await cli([
      "run",
      "--backend",
      "wasm",
      "--q",
      "q.npy",
      "--k",
      "k.npy",
      "--v",
      "v.npy",
      "--out",
      "d.npy",
      "--dense",
      "--layout",
      "BHSD",
    ], dir);
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stdout, /^d\.npy: f16 \[2, 3, 97, 4\], dense on wasm in [\d.]+ ms/);
    const dout = parseNpy(await Deno.readFile(`${dir}/d.npy`));
    assert.equal(dout.dtype, "f16");
    const dop = rt.attention({
      batch: 2,
      tokens: 97,
      heads: 3,
      headDim: 4,
      layout: "BHSD",
      dtype: "f16",
    });
    assert.deepEqual(dout.data, await dop.run(hq.data, hk.data, hv.data));
  } finally {
    rt.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: info reports the backend, adapter and models", async () => {
  const r = await cli(["info", "--backend", "wasm", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.chosen.backend, "wasm");
  assert.equal(info.wasm.available, true);
  assert.ok(info.models.some((m: { name: string }) => m.name === "wan2.1-t2v-1.3b-480p"));
  const text = await cli(["info"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^backend: +(wasm|webgpu) \(/m);
  assert.match(text.stdout, /^webgpu: /m);
});

Deno.test("cli: bench and demo forward to their scripts", async () => {
  const has = async (p: string) =>
    await Deno.stat(new URL(p, import.meta.url)).then(() => true, () => false);
  if (await has("../bench/bench.ts")) {
    const b = await cli(["bench", "--help"]);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout, /bench/);
  }
  if (!(await has("../demo.ts"))) {
    const d = await cli(["demo"]);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /^draftattn: demo is not available: .\/demo.ts is not in this checkout/);
  }
});
