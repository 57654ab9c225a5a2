/**
 * The module works when imported by URL, as a user without a checkout imports it: the repo is
 * served over HTTP on 127.0.0.1 and a fresh `deno run` in an empty directory (no config, an
 * empty module cache) imports `mod.ts` and `src/serve.ts`, type-checks them (remote modules
 * included, without the repo's compiler options), loads a bundled
 * model profile (a remote JSON import) and computes a small attention on WebAssembly.
 *
 * The only flag is `--allow-import=127.0.0.1:PORT`: Deno 2 asks for it for any remote host
 * outside its default list (deno.land, jsr.io, esm.sh, cdn.jsdelivr.net,
 * raw.githubusercontent.com, ...); the module itself needs no permission on WebAssembly.
 */
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url);

const TYPES: Record<string, string> = {
  ".ts": "application/typescript",
  ".json": "application/json",
  ".wgsl": "text/plain",
};

Deno.test("mod.ts imported by URL runs on WebAssembly with only --allow-import", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.split("/").includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(new URL("." + path, ROOT));
      const ext = path.slice(path.lastIndexOf("."));
      return new Response(body, {
        headers: { "content-type": TYPES[ext] ?? "application/octet-stream" },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const host = `127.0.0.1:${server.addr.port}`;
  const dir = await Deno.makeTempDir({ prefix: "draftattn_url_" });
  try {
    const script = `
      import { getModel, openRuntime } from "http://${host}/mod.ts";
      import { createHandler } from "http://${host}/src/serve.ts";
      const rt = await openRuntime({ backend: "wasm", threads: 1 });
      const op = rt.draftAttention({ frames: 2, height: 8, width: 16, heads: 1, headDim: 32 });
      const n = 2 * 8 * 16 * 32;
      const q = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
      const out = await op.run(q, q, q);
      const model = rt.draftAttention({ model: "wan2.1-t2v-1.3b-480p" });
      console.log(JSON.stringify({
        n: out.length,
        finite: out.every(Number.isFinite),
        heads: getModel("wan2.1-t2v-1.3b-480p").heads,
        g: model.g,
      }));
      rt.dispose();
      createHandler().close();
    `;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--check=all", "--no-config", `--allow-import=${host}`, "-"],
      cwd: dir,
      env: { DENO_DIR: `${dir}/deno_dir`, NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(script));
    await writer.close();
    const { code, stdout, stderr } = await child.output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 0, err);
    const result = JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").at(-1)!);
    // Wan 480p: 21 frames of 30 x 52 tokens under 8 x 16 windows -> 21 * 4 * 4 draft tokens.
    assert.deepEqual(result, { n: 2 * 8 * 16 * 32, finite: true, heads: 12, g: 21 * 4 * 4 });
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
