/**
 * The missing-adapter policy of the test files that drive WebGPU directly (kernels, backend):
 * no adapter is a failure under CI=true, and elsewhere unless DRAFTATTN_SKIP_GPU=1 (then the
 * tests are listed as ignored with the reason). Never a silent pass.
 *
 * @module
 */

/**
 * `Deno.test` for the tests of one suite that need `adapter`: named `<suite>: <name>`, ignored
 * with the reason or failing as the policy says when there is no adapter, resource and op
 * sanitizers off (GPU work outlives a test).
 */
export function gpuSuite(
  suite: string,
  adapter: GPUAdapter | null | undefined,
): (name: string, fn: () => Promise<void>) => void {
  const missing = adapter ? "" : "navigator.gpu.requestAdapter() returned no adapter";
  const skip =
    missing && Deno.env.get("CI") !== "true" && Deno.env.get("DRAFTATTN_SKIP_GPU") === "1"
      ? `DRAFTATTN_SKIP_GPU=1 and ${missing}`
      : "";
  return (name, fn) =>
    Deno.test({
      name: `${suite}: ${name}${skip ? ` [skipped: ${skip}]` : ""}`,
      ignore: skip !== "",
      sanitizeOps: false,
      sanitizeResources: false,
      fn: () => {
        if (missing) {
          throw new Error(
            `no WebGPU adapter (${missing})${
              Deno.env.get("CI") === "true"
                ? " under CI=true"
                : "; set DRAFTATTN_SKIP_GPU=1 to skip"
            }`,
          );
        }
        return fn();
      },
    });
}

/** The bytes of `src` (which needs COPY_SRC), through a mapped copy. */
export async function readBuffer(device: GPUDevice, src: GPUBuffer): Promise<Uint8Array> {
  const read = device.createBuffer({
    size: src.size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, 0, read, 0, src.size);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const out = new Uint8Array(read.getMappedRange().slice(0));
  read.destroy();
  return out;
}
