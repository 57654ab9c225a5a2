/**
 * Copies of a typed-array run's inputs, for the runs that cannot take them at call time.
 *
 * A run takes q, k and v before `run()` returns: normally by writing them where the run reads
 * them (`queue.writeBuffer`, which copies at the call; wasm memory), which the run does anyway.
 * Only a run that must wait behind an earlier run still holding those places copies them here.
 * While copied runs are still outstanding, one set of copies is kept for the next such run:
 * refilling arrays already touched costs the memcpy alone, while fresh arrays pay a page fault per
 * 4 KiB on first write (about half the cost of a 100 MB copy). Once the last copied run of a burst
 * is done the set is dropped, so that an idle op (an edge handler keeps a cache of them) holds no
 * copies.
 *
 * @module
 */
import type { TensorArray } from "./types.ts";

/** One op's copies of q, k and v; the spare set is reused when free. */
export class Snapshots {
  #spare: TensorArray[] | undefined;
  /** Copied runs taken and not yet given back. */
  #out = 0;

  /** Copies of `arrays`, in the spare set when it is free and fits, else new ones. */
  take(arrays: readonly TensorArray[]): TensorArray[] {
    this.#out++;
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

  /** Hands copies back once their run has read them; kept only while other copied runs wait. */
  give(copies: TensorArray[]): void {
    this.#out = Math.max(0, this.#out - 1);
    this.#spare = this.#out > 0 ? copies : undefined;
  }

  /** Drops the spare set (the op is disposed). */
  clear(): void {
    this.#spare = undefined;
    this.#out = 0;
  }
}
