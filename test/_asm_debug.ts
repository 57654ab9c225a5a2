/**
 * Provides the debug build of asm/ (assertions on) to the loader: the runtime modules do not
 * import it, so neither mod.ts nor the bundle ships it. Tests that run `build: "debug"` import
 * this file first.
 *
 * @module
 */
import { ASM_DEBUG } from "../src/generated/asm_debug.ts";
import { provideAsmBuild } from "../src/_asm.ts";

provideAsmBuild("debug", ASM_DEBUG);
