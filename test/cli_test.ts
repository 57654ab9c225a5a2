import assert from "node:assert/strict";
import { encodeNpy, parseNpy } from "../src/npy.ts";
import { openRuntime } from "../src/runtime.ts";
import { compareOutputs, denseStats, maskRecall, oracleRecall } from "../src/metrics.ts";
import { generateWorkload } from "../src/workload.ts";
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
  assert.match(main.stdout, /commands:[\s\S]*info[\s\S]*run[\s\S]*eval[\s\S]*bench[\s\S]*demo/);
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
    // Bad flags: one line and exit 2, no stack trace.
    for (
      const [args, want] of [
        [["--nope"], /^bench: Unknown option '--nope'/],
        [["--limits", "adapter,defualt"], /^bench: --limits must be one of adapter, default/],
        [["--shape", "wan"], /^bench: --shape must be one of .*wan-480p/],
        [["--reps", "0"], /^bench: --reps must be an integer >= 1, got "0"/],
        [["--sparsity", "0.9,1"], /^bench: --sparsity must be numbers in \[0, 1\)/],
      ] as const
    ) {
      const bad = await cli(["bench", ...args]);
      assert.equal(bad.code, 2, args.join(" "));
      assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
      assert.match(bad.stderr, want);
    }
  }
  if (!(await has("../demo.ts"))) {
    const d = await cli(["demo"]);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /^draftattn: demo is not available: .\/demo.ts is not in this checkout/);
  }
});

// ---------------------------------------------------------------------------------------------
// bf16 dumps, run's selection flags and the eval command
// ---------------------------------------------------------------------------------------------

/** A video-like layer (2 frames of 16 x 32, 7 text tokens after, 2 heads of 32), cut to bf16. */
const DUMP = { frames: 2, height: 16, width: 32, textTokens: 7, heads: 2, headDim: 32 };

/** f32 values cut to bf16 (truncation: what the file holds), with the bf16 bits. */
function bf16Of(x: Float32Array): { bits: Uint16Array; values: Float32Array } {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const bits = new Uint16Array(x.length);
  const cut = new Uint32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    bits[i] = u[i] >>> 16;
    cut[i] = (u[i] >>> 16) << 16;
  }
  return { bits, values: new Float32Array(cut.buffer) };
}

/** A safetensors file of BF16 and F32 tensors, written by hand as PyTorch's save_file does. */
function safetensorsBytes(
  tensors: Record<
    string,
    { dtype: "BF16" | "F32"; shape: number[]; data: Uint16Array | Float32Array }
  >,
  metadata: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let at = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.byteLength] };
    at += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + at);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  let p = 8 + json.length;
  for (const t of Object.values(tensors)) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return out;
}

Deno.test("cli: eval on a bf16 safetensors dump: rel-L2, recall and oracle as computed here", async () => {
  const dir = await Deno.makeTempDir();
  const rt = await openRuntime({ backend: "wasm" });
  try {
    const w = generateWorkload({ ...DUMP, seed: 5 });
    const tokens = w.tokens;
    const shape = [1, tokens, DUMP.heads, DUMP.headDim];
    const [q, k, v] = [w.q, w.k, w.v].map((x) => bf16Of(x as Float32Array));
    // The reference output: our dense attention on the bf16 values (as a model's own output
    // would be), stored as F32.
    const denseOp = rt.attention({ tokens, heads: DUMP.heads, headDim: DUMP.headDim });
    const o = await denseOp.run(q.values, k.values, v.values) as Float32Array;
    denseOp.dispose();
    const meta = {
      format: "pt",
      frames: "2",
      height: "16",
      width: "32",
      textTokens: "7",
      step: "10", // not a request field: reported as unused, not an error
    };
    await Deno.writeFile(
      `${dir}/dump.safetensors`,
      safetensorsBytes({
        q: { dtype: "BF16", shape, data: q.bits },
        k: { dtype: "BF16", shape, data: k.bits },
        v: { dtype: "BF16", shape, data: v.bits },
        o: { dtype: "F32", shape, data: o },
      }, meta),
    );
    const r = await cli([
      "eval",
      "--in",
      "dump.safetensors",
      "--backend",
      "wasm",
      "--sparsity",
      "0.5,0.9",
      "--estimator",
      "draft,sampled",
      "--json",
    ], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /metadata not used: step/);
    const res = JSON.parse(r.stdout);
    assert.equal(res.inputs.versus, "reference o");
    assert.equal(res.inputs.g, 8);
    assert.deepEqual(res.inputs.geometry.pool, [8, 16]);
    assert.equal(res.dense.relL2VsReference, 0); // same dense kernel, same bf16 inputs
    assert.equal(res.rows.length, 4);
    const geometry = { ...DUMP, textPosition: "after" as const };
    const stats = denseStats(q.values, k.values, geometry);
    let i = 0;
    const masks: Uint8Array[] = [];
    for (const sparsity of [0.5, 0.9]) {
      for (const estimator of ["draft", "sampled"] as const) {
        const op = rt.draftAttention({ ...geometry, sparsity, estimator });
        const out = await op.run(q.values, k.values, v.values);
        const { mask, density } = await op.lastMask();
        masks.push(mask);
        op.dispose();
        const row = res.rows[i++];
        assert.equal(row.sparsity, sparsity);
        assert.equal(row.estimator, estimator);
        assert.equal(row.policy, "percentile");
        assert.equal(row.density, Number(density.toPrecision(6)));
        const e = compareOutputs(o, out);
        assert.equal(row.relL2, Number(e.relL2.toPrecision(6)));
        assert.ok(e.relL2 > 0 && e.relL2 < 1);
        const m = maskRecall(stats, mask);
        assert.equal(row.recall, Number(m.mean.toPrecision(6)));
        assert.equal(row.oracleRecall, Number(oracleRecall(stats, m.kept).mean.toPrecision(6)));
        assert.ok(row.recall <= row.oracleRecall + 1e-12);
      }
    }

    // --recall-heads 1: recall of head 0 alone (its q, k and mask rows).
    const one = await cli(
      ["eval", "--in", "dump.safetensors", "--backend", "wasm", "--sparsity", "0.9"].concat(
        ["--recall-heads", "1", "--json"],
      ),
      dir,
    );
    assert.equal(one.code, 0, one.stderr);
    const head0 = (x: Float32Array) => {
      const out = new Float32Array(tokens * DUMP.headDim);
      for (let t = 0; t < tokens; t++) {
        out.set(x.subarray(t * 2 * DUMP.headDim, (t * 2 + 1) * DUMP.headDim), t * DUMP.headDim);
      }
      return out;
    };
    const stats0 = denseStats(head0(q.values), head0(k.values), { ...geometry, heads: 1 });
    const r0 = maskRecall(stats0, masks[2].subarray(0, 64));
    const j = JSON.parse(one.stdout);
    assert.equal(j.inputs.recallHeads, 1);
    assert.equal(j.rows[0].recall, Number(r0.mean.toPrecision(6)));
    assert.notEqual(j.rows[0].recall, res.rows[2].recall); // not the two-head mean

    // Text output, q/k/v as .npy files (f32), no reference: errors against our dense output.
    for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
      await Deno.writeFile(
        `${dir}/${name}.npy`,
        encodeNpy({ dtype: "f32", shape, data: t.values }),
      );
    }
    const text = await cli([
      "eval",
      "--q",
      "q.npy",
      "--k",
      "k.npy",
      "--v",
      "v.npy",
      "--frames",
      "2",
      "--height",
      "16",
      "--width",
      "32",
      "--text-tokens",
      "7",
      "--backend",
      "wasm",
      "--no-recall",
    ], dir);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /errors vs dense/);
    assert.match(text.stdout, /^0\.75 +percentile +draft +0\.2500 /m);
    assert.match(text.stdout, /^0\.9 +percentile +draft +0\.1250 /m);
    assert.doesNotMatch(text.stdout, /recall/);

    // Failures: one line, exit 1.
    const bad: [string[], RegExp][] = [
      [["eval", "--in", "q.npy"], /not valid|header/],
      [["eval", "--in", "dump.safetensors", "--policy", "topP"], /Invalid policy: .*"topP"/],
      [["eval", "--in", "dump.safetensors", "--dtype", "bf16"], /--dtype: must be "f32" or "f16"/],
      [["eval", "--in", "dump.safetensors", "--q", "q.npy"], /--q: cannot be combined with --in/],
      [["eval", "--in", "dump.safetensors", "--sparsity", "0.5,"], /--sparsity: has an empty item/],
    ];
    for (const [args, want] of bad) {
      const b = await cli([...args, "--backend", "wasm", "--no-recall"], dir);
      assert.equal(b.code, 1, args.join(" "));
      assert.equal(b.stderr.trim().split("\n").at(-1)!.startsWith("draftattn: "), true);
      assert.match(b.stderr, want, args.join(" "));
    }
  } finally {
    rt.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: run --dtype f16 on bf16, --policy / --estimator, --mask-out", async () => {
  const dir = await Deno.makeTempDir();
  const rt = await openRuntime({ backend: "wasm" });
  try {
    const w = generateWorkload({ ...DUMP, seed: 9 });
    const shape = [1, w.tokens, DUMP.heads, DUMP.headDim];
    const [q, k, v] = [w.q, w.k, w.v].map((x) => bf16Of(x as Float32Array));
    await Deno.writeFile(
      `${dir}/dump.safetensors`,
      safetensorsBytes({
        q: { dtype: "BF16", shape, data: q.bits },
        k: { dtype: "BF16", shape, data: k.bits },
        v: { dtype: "BF16", shape, data: v.bits },
      }, { frames: "2", height: "16", width: "32", textTokens: "7", sparsity: "0.8" }),
    );
    const r = await cli([
      "run",
      "--in",
      "dump.safetensors",
      "--out",
      "o.npy",
      "--mask-out",
      "mask.npy",
      "--dtype",
      "f16",
      "--policy",
      "rowTopK",
      "--estimator",
      "hybrid",
      "--samples",
      "4",
      "--backend",
      "wasm",
      "--json",
    ], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).dtype, "f16");
    const op = rt.draftAttention({
      ...DUMP,
      sparsity: 0.8,
      dtype: "f16",
      policy: "rowTopK",
      estimator: "hybrid",
      samples: 4,
    });
    const h = [q, k, v].map((t) => new Float16Array(t.values)); // bf16 -> f16, rounded to nearest even
    const want = await op.run(h[0], h[1], h[2]);
    const { mask } = await op.lastMask();
    op.dispose();
    const out = parseNpy(await Deno.readFile(`${dir}/o.npy`));
    assert.equal(out.dtype, "f16");
    assert.deepEqual(out.data, want);
    const maskFile = await Deno.readFile(`${dir}/mask.npy`);
    const header = new TextDecoder().decode(maskFile.subarray(10, 128));
    assert.match(header, /'descr': '\|u1', 'fortran_order': False, 'shape': \(1, 2, 8, 8\)/);
    assert.deepEqual(maskFile.subarray(128), mask);
    const dense = await cli([
      "run",
      "--in",
      "dump.safetensors",
      "--out",
      "d.npy",
      "--dense",
      "--mask-out",
      "m.npy",
      "--backend",
      "wasm",
    ], dir);
    assert.equal(dense.code, 1);
    assert.match(dense.stderr, /--mask-out: dense attention has no mask/);
  } finally {
    rt.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
