/**
 * The mask-reuse schedule of a draft op (`maskEvery`), shared by both backends' mask stages
 * (src/wasm/mask.ts, src/webgpu/mask.ts): which run computes the block mask, which reuse it, and
 * which layer the held mask belongs to.
 *
 * The mask is computed on the first run and then on every `maskEvery`-th run; the runs in between
 * reuse it. Only runs the backend reports `done` count: a typed-array run once it has succeeded
 * (both backends), a run on GPU buffers once it is submitted (its errors settle later, and the
 * next run's recording does not wait for them). A run rejected before it is recorded (a bad
 * `layer`, bad buffers) leaves the schedule where it was.
 *
 * Layers: with `maskEvery > 1` an op keeps its mask between runs; one op run for several
 * transformer layers would hand layer 2 the mask layer 1 computed. A run may name its layer
 * (`op.run(q, k, v, { layer })`, `op.run({ q, k, v, out, layer })`): a run that would reuse the
 * mask of another layer (or of a run that named none) is rejected with `INVALID_INPUT` before
 * anything is recorded. Keying one mask per layer inside the op would cost the block lists once
 * per layer (~0.9-1.9% of Q+K+V+O each in f16); one op per layer costs the same and is what the
 * docs ask for, so the op does not do it for you.
 *
 * @module
 */
import { DraftAttentionError } from "./errors.ts";

/**
 * When an op computes its block mask, and the layer check of the runs that reuse it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MaskSchedule } from "./_mask_schedule.ts";
 * const s = new MaskSchedule(3);
 * const due: boolean[] = [];
 * for (let run = 0; run < 4; run++) {
 *   due.push(s.due());
 *   s.done(due[run], 0);
 * }
 * assert.deepEqual(due, [true, false, false, true]);
 * s.done(s.due(), 0); // run 4 reuses layer 0's mask
 * assert.throws(() => s.checkLayer(1), /reuse the block mask computed for layer 0/);
 * ```
 */
export class MaskSchedule {
  /** Runs per mask computation (`spec.mask.maskEvery`). */
  readonly maskEvery: number;
  /** Runs done since the mask was last computed; -1 before the first. */
  #age = -1;
  /** Whether a run that computed the mask is done (a mask is held). */
  #held = false;
  /** Layer named by the run that computed the held mask (undefined: none named, or no mask). */
  #layer: number | undefined;

  constructor(maskEvery: number) {
    this.maskEvery = maskEvery;
  }

  /** Whether the next run computes the mask; otherwise it reuses the last one. */
  due(): boolean {
    return this.#age < 0 || this.#age + 1 >= this.maskEvery;
  }

  /**
   * Throws when a run naming `layer` would reuse a mask computed for another layer. Runs that
   * name no layer are never rejected (the caller opted out of the check).
   */
  checkLayer(layer: number | undefined): void {
    if (layer === undefined || this.due() || !this.#held || layer === this.#layer) return;
    const k = this.maskEvery;
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "layer",
      `${layer} would reuse the block mask computed for ${
        this.#layer === undefined ? "a run that named no layer" : `layer ${this.#layer}`
      } (maskEvery ${k} reuses a mask on the ${k - 1} runs after it is computed); build one ` +
        `op per layer`,
    );
  }

  /**
   * Records a run that did (`computed`) or did not compute the mask; a run that computed it
   * takes the mask over for its layer.
   */
  done(computed: boolean, layer?: number): void {
    this.#age = computed ? 0 : this.#age + 1;
    if (!computed) return;
    this.#held = true;
    this.#layer = layer;
  }
}
