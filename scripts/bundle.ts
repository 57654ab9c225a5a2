/**
 * `deno task bundle`: bundles mod.ts into one minified ES module, `dist/draftattn.js`, for
 * browsers and edge runtimes. The WebAssembly (base64) and WGSL are already embedded as modules
 * under src/generated/ and the model profiles are JSON imports, so esbuild inlines everything:
 * the file imports nothing and reads no files.
 *
 * Flags: `--outfile PATH` (default dist/draftattn.js), `--no-minify`, `--max-kb N` (default 300:
 * fail when the bundle is larger).
 */
import * as esbuild from "npm:esbuild@0.28.2";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    outfile: { type: "string", default: "dist/draftattn.js" },
    "no-minify": { type: "boolean", default: false },
    "max-kb": { type: "string", default: "300" },
  },
});

try {
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: ["mod.ts"],
    outfile: args.outfile,
    bundle: true,
    format: "esm",
    // Neither node nor browser: the bundle uses only web APIs (WebAssembly, navigator.gpu).
    platform: "neutral",
    target: "es2022",
    minify: !args["no-minify"],
    legalComments: "none",
    metafile: true,
    logLevel: "warning",
  });
  const [path, output] = Object.entries(result.metafile.outputs)[0];
  const inputs = Object.keys(result.metafile.inputs).length;
  const kb = output.bytes / 1024;
  console.log(
    `bundle: ${path} ${output.bytes} bytes (${kb.toFixed(1)} KiB) from ${inputs} modules`,
  );
  const imports = output.imports.filter((i) => !i.path.startsWith("<"));
  if (imports.length > 0) {
    console.error(`bundle: unexpected external imports: ${imports.map((i) => i.path).join(", ")}`);
    Deno.exitCode = 1;
  }
  if (kb > Number(args["max-kb"])) {
    console.error(`bundle: ${kb.toFixed(1)} KiB exceeds the budget of ${args["max-kb"]} KiB`);
    Deno.exitCode = 1;
  }
} catch (e) {
  // esbuild has already printed the located errors.
  console.error(`bundle: ${(e as Error).message.split("\n")[0]}`);
  Deno.exitCode = 1;
} finally {
  await esbuild.stop();
}
