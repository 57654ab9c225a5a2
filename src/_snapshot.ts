/**
 * Copies of a typed-array run's inputs, for the runs that cannot take them at call time.
 *
 * A run takes q, k and v before `run()` returns: normally by writing them where the run reads
 * them (`queue.writeBuffer`, which copies at the call; wasm memory), which the run does anyway.
 * Only a run that must wait behind an earlier run still holding those places copies them here.
 * One set of copies is kept for the next such run: refilling arrays already touched costs the
 * memcpy alone, while fresh arrays pay a page fault per 4 KiB on first write (about half the
 * cost of a 100 MB copy).
 *
 * @module
 */
import type { TensorArray } from "./types.ts";

/** One op's copies of q, k and v; the spare set is reused when free. */
export class Snapshots {
  #spare: TensorArray[] | undefined;

  /** Copies of `arrays`, in the spare set when it is free and fits, else new ones. */
  take(arrays: readonly TensorArray[]): TensorArray[] {
    const spare = this.#spare;
    this.#spare = undefined;
    return arrays.map((x, i) => {
      const s = spare?.[i];
      if (s && s.constructor === x.constructor && s.length === x.length) {
        // Same element type: a plain memcpy.
        (s as Float32Array).set(x as Float32Array);
        return s;
      }
      return x.slice();
    });
  }

  /** Hands copies back once their run has read them. */
  give(copies: TensorArray[]): void {
    this.#spare = copies;
  }

  /** Drops the spare set (the op is disposed). */
  clear(): void {
    this.#spare = undefined;
  }
}
