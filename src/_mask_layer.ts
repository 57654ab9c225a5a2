/**
 * Which layer a reused block mask belongs to. With `maskEvery > 1` an op keeps its mask between
 * runs; one op run for several transformer layers would hand layer 2 the mask layer 1 computed.
 * A run may name its layer (`op.run(q, k, v, { layer })`, `op.run({ q, k, v, out, layer })`):
 * a run that would reuse the mask of another layer (or of a run that named none) is rejected
 * with `INVALID_INPUT` before anything is recorded. Keying one mask per layer inside the op
 * would cost the block lists once per layer (~0.9-1.9% of Q+K+V+O each in f16); one op per
 * layer costs the same and is what the docs ask for, so the op does not do it for you.
 *
 * @module
 */
import { DraftAttentionError } from "./errors.ts";

/** The layer id of the mask an op holds, and the check of each run against it. */
export class MaskLayer {
  /** Layer named by the run that computed the held mask (undefined: none named, or no mask). */
  #layer: number | undefined;
  #computed = false;

  /**
   * Throws when a run naming `layer` would reuse (`due` false) a mask computed for another
   * layer. Runs that name no layer are never rejected (the caller opted out of the check).
   */
  check(args: { layer: number | undefined; due: boolean; maskEvery: number }): void {
    const { layer, due, maskEvery } = args;
    if (layer === undefined || due || !this.#computed || layer === this.#layer) return;
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "layer",
      `${layer} would reuse the block mask computed for ${
        this.#layer === undefined ? "a run that named no layer" : `layer ${this.#layer}`
      } (maskEvery ${maskEvery} reuses a mask on the ${maskEvery - 1} runs after it is ` +
        `computed); build one op per layer`,
    );
  }

  /** Records a successful run; a run that computed the mask takes it over for its layer. */
  done(computed: boolean, layer: number | undefined): void {
    if (!computed) return;
    this.#computed = true;
    this.#layer = layer;
  }
}
