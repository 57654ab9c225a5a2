import assert from "node:assert/strict";
import { DraftAttentionError } from "../src/errors.ts";
import { openRuntime, type Runtime } from "../src/runtime.ts";
import { encodeSafetensors, parseSafetensors } from "../src/safetensors.ts";
import { createHandler, type HandlerOptions } from "../src/serve.ts";
import type { Tensor } from "../src/_tensor.ts";
import type { DType } from "../src/types.ts";

/** Starts a real server on 127.0.0.1 (port 0), runs `fn` with its URL, shuts it down. */
async function withServer(
  options: HandlerOptions,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const handler = createHandler(options);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
    handler.close();
  }
}

function tensor(dtype: DType, shape: number[], seed: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed) * 0.8);
  return {
    dtype,
    shape,
    data: dtype === "f16" ? new Float16Array(values) : new Float32Array(values),
  };
}

function body(
  tensors: Record<string, Tensor>,
  metadata: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  return encodeSafetensors({ tensors, metadata });
}

async function post(url: string, bytes: BodyInit, init: RequestInit = {}): Promise<Response> {
  return await fetch(url, { method: "POST", body: bytes, ...init });
}

async function expectError(res: Response, status: number, code: string, field?: string | RegExp) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  const { error } = JSON.parse(text);
  assert.equal(error.code, code, text);
  if (typeof field === "string") assert.equal(error.field, field, text);
  else if (field) assert.match(error.field, field, text);
  assert.equal(typeof error.message, "string");
  return error;
}

let shared: Runtime | undefined;
async function wasm(): Promise<Runtime> {
  shared ??= await openRuntime({ backend: "wasm" });
  return shared;
}

Deno.test("serve: a draft request (f32, BSHD, ragged windows, text) matches runtime.run", async () => {
  const rt = await wasm();
  const geometry = { frames: 2, height: 9, width: 20, textTokens: 3, heads: 2, headDim: 16 };
  const tokens = 2 * 9 * 20 + 3;
  const [q, k, v] = [1, 2, 3].map((s) => tensor("f32", [1, tokens, 2, 16], s));
  await withServer({ runtime: rt }, async (url) => {
    const res = await post(
      url,
      body({ q, k, v }, {
        frames: "2",
        height: "9",
        width: "20",
        textTokens: "3",
        pool: "4x8",
        sparsity: "0.5",
      }),
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/octet-stream");
    const file = parseSafetensors(new Uint8Array(await res.arrayBuffer()));
    assert.deepEqual(Object.keys(file.tensors), ["out"]);
    const out = file.tensors.out;
    assert.equal(out.dtype, "f32");
    assert.deepEqual(out.shape, q.shape);
    const op = rt.draftAttention({ ...geometry, pool: [4, 8], sparsity: 0.5 });
    const want = await op.run(q.data, k.data, v.data);
    const mask = await op.lastMask();
    op.dispose();
    assert.deepEqual(out.data, want);
    assert.equal(file.metadata.backend, "wasm");
    assert.equal(file.metadata.mode, "draft");
    assert.equal(Number(file.metadata.g), 2 * 3 * 3);
    assert.equal(Number(file.metadata.density), mask.density);
    assert.ok(Number(file.metadata.ms) >= 0);
    // The same request again reuses the cached op and gives the same bytes.
    const again = await post(
      url,
      body({ q, k, v }, {
        frames: "2",
        height: "9",
        width: "20",
        textTokens: "3",
        pool: "4x8",
        sparsity: "0.5",
      }),
    );
    assert.deepEqual(
      parseSafetensors(new Uint8Array(await again.arrayBuffer())).tensors.out.data,
      want,
    );
  });
});

Deno.test("serve: dense f16 BHSD and a model profile request match runtime.run", async () => {
  const rt = await wasm();
  await withServer({ runtime: rt }, async (url) => {
    const [q, k, v] = [4, 5, 6].map((s) => tensor("f16", [2, 3, 65, 8], s));
    const res = await post(url, body({ q, k, v }, { mode: "dense", layout: "BHSD" }));
    assert.equal(res.status, 200);
    const file = parseSafetensors(new Uint8Array(await res.arrayBuffer()));
    assert.equal(file.tensors.out.dtype, "f16");
    const op = rt.attention({
      batch: 2,
      tokens: 65,
      heads: 3,
      headDim: 8,
      layout: "BHSD",
      dtype: "f16",
    });
    assert.deepEqual(file.tensors.out.data, await op.run(q.data, k.data, v.data));
    op.dispose();
    assert.equal(file.metadata.mode, "dense");
    assert.equal(file.metadata.density, undefined);

    // LTX-Video: 21 x 16 x 22 latent grid (7392 tokens), here with 1 head of 4.
    const [mq, mk, mv] = [7, 8, 9].map((s) => tensor("f32", [1, 7392, 1, 4], s));
    const mres = await post(
      url,
      body({ q: mq, k: mk, v: mv }, { model: "ltx-video", sparsity: "0.8" }),
    );
    assert.equal(mres.status, 200);
    const mfile = parseSafetensors(new Uint8Array(await mres.arrayBuffer()));
    const mop = rt.draftAttention({ model: "ltx-video", heads: 1, headDim: 4, sparsity: 0.8 });
    assert.deepEqual(mfile.tensors.out.data, await mop.run(mq.data, mk.data, mv.data));
    mop.dispose();
    assert.equal(Number(mfile.metadata.g), 21 * 2 * 2);
  });
});

/** Where there is no adapter the WebGPU case is ignored (reported, not silently passed). */
const HAS_ADAPTER = (await navigator.gpu?.requestAdapter().catch(() => null)) != null;

Deno.test({
  name: "serve: on WebGPU where there is an adapter, the answer matches that backend",
  ignore: !HAS_ADAPTER,
}, async () => {
  const gpu = await openRuntime({ backend: "webgpu" });
  try {
    const [q, k, v] = [1, 2, 3].map((s) => tensor("f32", [1, 2 * 8 * 24 + 2, 2, 8], s));
    await withServer({ runtime: gpu }, async (url) => {
      const health = await (await fetch(`${url}/health`)).json();
      assert.equal(health.backend.backend, "webgpu");
      const res = await post(
        url,
        body({ q, k, v }, {
          frames: "2",
          height: "8",
          width: "24",
          textTokens: "2",
          sparsity: "0.5",
        }),
      );
      assert.equal(res.status, 200);
      const file = parseSafetensors(new Uint8Array(await res.arrayBuffer()));
      assert.equal(file.metadata.backend, "webgpu");
      const op = gpu.draftAttention({
        frames: 2,
        height: 8,
        width: 24,
        textTokens: 2,
        heads: 2,
        headDim: 8,
        sparsity: 0.5,
      });
      const want = await op.run(q.data, k.data, v.data);
      assert.equal(Number(file.metadata.density), (await op.lastMask()).density);
      op.dispose();
      const got = file.tensors.out.data;
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
      assert.ok(err <= 1e-6, `max difference ${err}`);
    });
  } finally {
    gpu.dispose();
  }
});

Deno.test("serve: GET /health, 405 for other methods", async () => {
  await withServer({ runtime: await wasm() }, async (url) => {
    const res = await fetch(`${url}/health`);
    assert.equal(res.status, 200);
    const health = await res.json();
    assert.equal(health.status, "ok");
    assert.equal(health.backend.backend, "wasm");
    assert.equal(health.limits.maxConcurrent, 1);
    const get = await fetch(url);
    assert.equal(get.headers.get("allow"), "POST");
    await expectError(get, 405, "METHOD", "method");
    await expectError(await fetch(url, { method: "PUT", body: "x" }), 405, "METHOD");
    await expectError(await post(`${url}/health`, "x"), 405, "METHOD");
  });
});

Deno.test("serve: malformed requests are 400 with { error: { code, field, message } }", async () => {
  await withServer({ runtime: await wasm() }, async (url) => {
    const t = (s: number) => tensor("f32", [1, 128, 1, 8], s);
    const geo = { frames: "1", height: "8", width: "16" };
    await expectError(await post(url, "not a safetensors file"), 400, "INVALID_INPUT", "body");
    await expectError(await post(url, new Uint8Array(0)), 400, "INVALID_INPUT", "body");
    const e = await expectError(
      await post(url, body({ q: t(1), k: t(2) }, geo)),
      400,
      "INVALID_INPUT",
      "body",
    );
    assert.match(e.message, /exactly the tensors q, k, v; got k, q/);
    await expectError(
      await post(url, body({ q: t(1), k: t(2), v: t(3) }, { ...geo, width: "15" })),
      400,
      "INVALID_INPUT",
      "q",
    );
    await expectError(
      await post(url, body({ q: t(1), k: t(2), v: tensor("f16", [1, 128, 1, 8], 3) }, geo)),
      400,
      "INVALID_INPUT",
      "v",
    );
    await expectError(
      await post(url, body({ q: t(1), k: t(2), v: t(3) }, { ...geo, sparsty: "0.5" })),
      400,
      "INVALID_OPTION",
      "sparsty",
    );
    await expectError(
      await post(url, body({ q: t(1), k: t(2), v: t(3) }, { ...geo, sparsity: "1.5" })),
      400,
      "INVALID_OPTION",
      "sparsity",
    );
    await expectError(
      await post(url, body({ q: t(1), k: t(2), v: t(3) }, { model: "sora" })),
      400,
      "UNKNOWN_MODEL",
      "model",
    );
    const odd = (s: number) => tensor("f32", [1, 128, 1, 6], s);
    await expectError(
      await post(url, body({ q: odd(1), k: odd(2), v: odd(3) }, geo)),
      400,
      "UNSUPPORTED",
      "headDim",
    );
  });
});

Deno.test("serve: 413 from Content-Length, from a streamed body and from tensor size", async () => {
  await withServer(
    { runtime: await wasm(), maxBodyBytes: 4096, maxTensorElements: 500 },
    async (url) => {
      const big = new Uint8Array(5000);
      const e = await expectError(await post(url, big), 413, "TOO_LARGE", "body");
      assert.match(e.message, /Content-Length 5000 exceeds the limit of 4096/);
      // No Content-Length: the stream is cut once it passes the limit.
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < 5; i++) c.enqueue(new Uint8Array(1000));
          c.close();
        },
      });
      const s = await expectError(await post(url, stream), 413, "TOO_LARGE", "body");
      assert.match(s.message, /more than 4096 bytes/);
      // q: 512 elements (2 KiB) fit the body limit but not the element limit.
      const small = (x: number) => tensor("f32", [1, 1, 1, 4], x);
      const bytes = body({ q: tensor("f32", [1, 128, 1, 4], 1), k: small(2), v: small(3) }, {});
      await expectError(await post(url, bytes), 413, "TOO_LARGE", "q");
    },
  );
});

Deno.test("serve: 429 when maxConcurrent are running and maxQueue are waiting", async () => {
  await withServer({ runtime: await wasm(), maxConcurrent: 1, maxQueue: 0 }, async (url) => {
    // The first request is admitted and holds its slot while its body is still uploading.
    let finish!: () => void;
    const opened = Promise.withResolvers<void>();
    const slow = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array([1, 2, 3]));
        opened.resolve();
        finish = () => c.close();
      },
    });
    const first = post(url, slow);
    await opened.promise;
    // Wait until the server has admitted it.
    for (let i = 0; i < 100; i++) {
      const h = await (await fetch(`${url}/health`)).json();
      if (h.load.admitted === 1) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const busy = await post(url, new Uint8Array(8));
    assert.equal(busy.headers.get("retry-after"), "1");
    await expectError(busy, 429, "BUSY", "server");
    finish();
    await expectError(await first, 400, "INVALID_INPUT", "body");
    // Once it has finished, requests are admitted again.
    await expectError(await post(url, new Uint8Array(8)), 400, "INVALID_INPUT", "body");
  });
});

Deno.test("serve: 503 when the runtime cannot be opened or was disposed", async () => {
  const t = (s: number) => tensor("f32", [1, 128, 1, 8], s);
  const request = body({ q: t(1), k: t(2), v: t(3) }, { frames: "1", height: "8", width: "16" });
  const missing = Promise.reject(
    new DraftAttentionError("NO_BACKEND", "backend", "no WebGPU adapter was found"),
  );
  await withServer({ runtime: missing }, async (url) => {
    await expectError(await post(url, request), 503, "NO_BACKEND", "backend");
    await expectError(await fetch(`${url}/health`), 503, "NO_BACKEND");
  });
  const dead = await openRuntime({ backend: "wasm" });
  dead.dispose();
  await withServer({ runtime: dead }, async (url) => {
    await expectError(await post(url, request), 503, "DISPOSED", "runtime");
  });
});

Deno.test("serve: a handler opens its own runtime (backend option) and closes it", async () => {
  await withServer({ backend: "wasm" }, async (url) => {
    const health = await (await fetch(`${url}/health`)).json();
    assert.equal(health.backend.backend, "wasm");
  });
  const handler = createHandler({ backend: "wasm" });
  handler.close();
  await expectError(await handler(new Request("http://x/health")), 503, "DISPOSED", "server");
  assert.throws(() => createHandler({ maxQueue: -1 }), DraftAttentionError);
  shared?.dispose();
});
