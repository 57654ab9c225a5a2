// The WebAssembly builds: relaxed SIMD where the engine has it, plain SIMD where it does not
// (forced here by a test hook, since Deno has both), a typed error where there is no SIMD, and
// the debug build kept out of the runtime modules.
import assert from "node:assert/strict";
import { DraftAttentionError, openRuntime } from "../mod.ts";
import { asmSimd, forceAsmSimd } from "../src/_asm.ts";
import { attentionF64, maxAbsErr, randomInputs } from "./reference.ts";

Deno.test("wasm simd: Deno's V8 has relaxed SIMD, so detection picks the relaxed builds", () => {
  assert.equal(asmSimd(), "relaxed");
});

Deno.test("wasm simd: the plain build runs on 1 and 2 threads and matches the relaxed one", async () => {
  // 1.3e8 FLOPs: above the size a run keeps on the calling thread, so 2 threads share it.
  const dims = { batch: 1, tokens: 512, heads: 2, headDim: 64, layout: "BSHD" } as const;
  const { q, k, v } = randomInputs({ ...dims, dtype: "f32", seed: 7 });
  const want = attentionF64({ q, k, v, dims, scale: 1 / 8 });
  const outs: Record<string, Float32Array> = {};
  for (const [level, threads] of [["relaxed", 1], ["plain", 1], ["plain", 2]] as const) {
    forceAsmSimd(level);
    const rt = await openRuntime({ backend: "wasm", threads });
    forceAsmSimd(undefined);
    try {
      const info = rt.describe();
      assert.equal(info.features.includes("relaxed-simd"), level === "relaxed");
      assert.equal(info.threads, threads);
      const op = rt.attention({ tokens: dims.tokens, heads: dims.heads, headDim: dims.headDim });
      const out = await op.run(q, k, v) as Float32Array;
      op.dispose();
      const { err } = maxAbsErr(out, want);
      assert.ok(err < 1e-5, `${level}/${threads}: max error ${err}`);
      outs[`${level}/${threads}`] = out;
    } finally {
      rt.dispose();
    }
  }
  // Threads split the rows, not the sums: bit-identical to one thread.
  assert.deepEqual(outs["plain/2"], outs["plain/1"]);
  assert.ok(maxAbsErr(outs["plain/1"], outs["relaxed/1"]).err < 1e-5);
});

Deno.test("wasm simd: no SIMD at all rejects with NO_BACKEND, not a CompileError", async () => {
  forceAsmSimd("none");
  try {
    await assert.rejects(openRuntime({ backend: "wasm" }), (e) => {
      assert.ok(e instanceof DraftAttentionError, String(e));
      assert.equal(e.code, "NO_BACKEND");
      assert.equal(e.field, "backend");
      assert.match(e.message, /no SIMD/);
      return true;
    });
  } finally {
    forceAsmSimd(undefined);
  }
});

Deno.test("wasm simd: the runtime modules do not import the debug build", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "mod.ts"],
    cwd: new URL("../", import.meta.url),
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: { specifier: string }[];
  };
  const names = graph.modules.map((m) => m.specifier);
  assert.ok(names.some((s) => s.endsWith("/src/generated/asm_release_plain.ts")));
  assert.ok(!names.some((s) => s.includes("asm_debug")), names.join("\n"));
});
