/**
 * Runs demo.ts in a child process (test/demo_test.ts, test/policy_demo_test.ts).
 *
 * @module
 */

const DEMO = new URL("../demo.ts", import.meta.url);

/** `deno run -A demo.ts ...args`: its exit code and decoded output. */
export async function demo(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", DEMO.href, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
