/**
 * The doc examples (`deno test --doc`) must be able to fail: `console.assert` only prints, so a
 * wrong example would pass. Every example asserts with `node:assert` instead; this test finds any
 * `console.assert` that slips back into a doc comment, the README or docs/.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

async function* files(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    const url = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory && e.name !== "generated") yield* files(url);
    else if (e.isFile && /\.(ts|md)$/.test(e.name)) yield url;
  }
}

Deno.test("doc examples assert with node:assert, never console.assert", async () => {
  const found: string[] = [];
  const roots = [new URL("src/", ROOT), new URL("docs/", ROOT)];
  const single = [new URL("README.md", ROOT), new URL("mod.ts", ROOT)];
  const all: URL[] = [...single];
  for (const r of roots) for await (const f of files(r)) all.push(f);
  assert.ok(all.length > 20, `only ${all.length} files scanned`);
  for (const f of all) {
    const lines = (await Deno.readTextFile(f)).split("\n");
    lines.forEach((l, i) => {
      if (l.includes("console.assert")) {
        found.push(`${f.pathname.slice(ROOT.pathname.length)}:${i + 1}`);
      }
    });
  }
  assert.deepEqual(found, [], `console.assert in doc examples: ${found.join(", ")}`);
});
