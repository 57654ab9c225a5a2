import assert from "node:assert/strict";
import { createStepSchedule, DraftAttentionError } from "../mod.ts";

Deno.test("step schedule: reference defaults, 30% of 50 steps and the first layer dense", () => {
  const s = createStepSchedule();
  assert.equal(s.denseSteps, 15);
  let dense = 0;
  for (let step = 0; step < 50; step++) {
    for (let layer = 0; layer < 40; layer++) {
      const m = s.mode({ step, layer });
      const want = step < 15 || layer === 0 ? "dense" : "sparse";
      assert.equal(m, want, `step ${step} layer ${layer}`);
      if (m === "dense") dense++;
    }
    assert.equal(s.mode({ step, layer: 7, cross: true }), "dense");
  }
  assert.equal(dense, 15 * 40 + 35);
});

Deno.test("step schedule: timestep threshold and overrides", () => {
  const s = createStepSchedule({ steps: 30, denseLayers: 2, denseAboveTimestep: 925 });
  assert.equal(s.mode({ step: 0, layer: 3, timestep: 999 }), "dense");
  assert.equal(s.mode({ step: 3, layer: 3, timestep: 900 }), "sparse");
  assert.equal(s.mode({ step: 3, layer: 1, timestep: 900 }), "dense");
  assert.throws(
    () => s.mode({ step: 3, layer: 3 }),
    (e: unknown) => e instanceof DraftAttentionError && e.field === "timestep",
  );
  assert.throws(
    () => s.mode({ step: 30, layer: 0 }),
    (e: unknown) =>
      e instanceof DraftAttentionError && e.code === "INVALID_OPTION" && e.field === "step",
  );
  assert.throws(
    () => createStepSchedule({ denseStepFraction: 1.5 }),
    (e: unknown) =>
      e instanceof DraftAttentionError && e.field === "denseStepFraction" &&
      e.message.includes("1.5"),
  );
});
