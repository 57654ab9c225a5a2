/**
 * `deno task demo`: draft attention against dense attention on a video-like workload. The demo
 * lives in demo/ (main.ts: flags and runs; table.ts: the result table; png.ts: pictures); this
 * file is its entry point. Run with `--help` for the flags.
 *
 * @module
 */
import { main } from "./demo/main.ts";

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`demo: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
