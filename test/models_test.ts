import assert from "node:assert/strict";
import { DraftAttentionError, getModel, MODELS } from "../mod.ts";
import { checkProfile } from "../src/models.ts";

// Video tokens and text tokens from the geometry table of docs/spec.md.
const SPEC_TABLE: Record<string, [number, number, number]> = {
  "hunyuanvideo-768p": [126720, 256, 24],
  "hunyuanvideo-720p": [118800, 256, 24],
  "wan2.1-t2v-1.3b-480p": [32760, 0, 12],
  "wan2.1-t2v-14b-720p": [75600, 0, 40],
  "wan2.1-paper-512p": [32256, 0, 40],
  "cogvideox-5b": [17550, 226, 48],
  "mochi-1": [44520, 256, 24],
  "ltx-video": [7392, 0, 32],
};

Deno.test("model profiles: every bundled profile passes the schema and matches docs/spec.md", () => {
  assert.deepEqual(Object.keys(MODELS).sort(), Object.keys(SPEC_TABLE).sort());
  for (const [name, [video, text, heads]] of Object.entries(SPEC_TABLE)) {
    const m = getModel(name);
    assert.equal(m.name, name);
    assert.equal(m.frames * m.height * m.width, video, name);
    assert.equal(m.textTokens, text, name);
    assert.equal(m.heads, heads, name);
  }
  assert.equal(getModel("cogvideox-5b").textPosition, "before");
  assert.equal(getModel("mochi-1").textPosition, "after");
});

Deno.test("model profiles: unknown names and malformed profiles are typed errors", () => {
  assert.throws(
    () => getModel("sora"),
    (e: unknown) =>
      e instanceof DraftAttentionError && e.code === "UNKNOWN_MODEL" && e.field === "model" &&
      e.message.includes('"sora"'),
  );
  const good = { ...getModel("ltx-video") };
  for (
    const [field, value] of [
      ["frames", 0],
      ["headDim", 1.5],
      ["textPosition", "middle"],
      ["pool", [8]],
      ["sparsity", 1],
      ["extra", 1],
    ] as const
  ) {
    assert.throws(
      () => checkProfile({ ...good, [field]: value }),
      (e: unknown) => e instanceof DraftAttentionError && e.field === `model.${field}`,
      field,
    );
  }
});
