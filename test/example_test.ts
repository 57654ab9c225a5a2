/**
 * The runnable examples run for real: examples/dit_step.ts (onnxruntime-web's WebGPU EP and
 * draftattn on one device, compared there with a float64 reference; exit 0 only when they
 * agree). It needs a WebGPU adapter (the missing-adapter policy of test/_gpu.ts) and
 * onnxruntime-web, a dev-only npm package: where it cannot be loaded (no registry, not cached)
 * the test is ignored with that reason, except under CI=true, where it fails.
 *
 * @module
 */
import assert from "node:assert/strict";
import { gpuSuite } from "./_gpu.ts";

const ORT_NPM: string = "npm:onnxruntime-web@1.30.0/webgpu";
const ortMissing = await import(ORT_NPM).then(
  () => "",
  (e) => `onnxruntime-web cannot be loaded (${String(e?.message ?? e).split("\n")[0]})`,
);
const adapter = await navigator.gpu?.requestAdapter();
const skip = ortMissing && Deno.env.get("CI") !== "true";

if (skip) {
  Deno.test({ name: `examples: dit_step.ts [skipped: ${ortMissing}]`, ignore: true, fn() {} });
} else {
  gpuSuite("examples", adapter)(
    "dit_step.ts: ORT's block parts and draftattn share buffers; matches float64",
    async () => {
      if (ortMissing) throw new Error(ortMissing);
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../examples/dit_step.ts", import.meta.url).href],
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdin: "null",
      }).output();
      const stdout = new TextDecoder().decode(out.stdout);
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stdout + stderr);
      assert.match(stdout, /modes per step \(layer by layer, D dense, S draft\): DD DS DS DS/);
      const m = /max \|diff\| vs float64 reference ([\d.e+-]+) .*would differ by ([\d.e+-]+)/
        .exec(stdout);
      assert.ok(m, stdout);
      assert.ok(Number(m[1]) < 1e-4 && Number(m[2]) > 1e-2, stdout);
      assert.match(stdout, /^ok$/m);
    },
  );
}
