/**
 * The edge handler's rejections of slow, heavy and hostile clients: each case is a test in
 * test/serve_test.ts (against a real server on 127.0.0.1) and a row of docs/errors.md (rendered
 * by test/errors_test.ts with {@linkcode renderServeSection}), so the doc cannot drift.
 *
 * No side effects at load time: both test files import it.
 */
import { encodeSafetensors } from "../src/safetensors.ts";
import { createHandler, type HandlerOptions, serveFlags } from "../src/serve.ts";
import type { Tensor } from "../src/_tensor.ts";

/** One case: sent over HTTP to a server with `options`, or a call that must throw. */
export interface ServeCase {
  /** What is sent, as the doc's row says it. */
  input: string;
  /** HTTP status, or 0 for a call that throws. */
  status: number;
  code: string;
  field: string;
  /** Handler options besides `backend: "wasm"`. */
  options?: HandlerOptions;
  /** Sends the request; `handler` is the server's, for cases HTTP clients cannot produce. */
  send?: (url: string, handler: (r: Request) => Promise<Response>) => Promise<Response>;
  /** A call that must throw the error. */
  call?: () => unknown;
  /** The message must match. */
  names?: RegExp;
  /** The answer must come within this many milliseconds of sending. */
  withinMs?: number;
  /** Run before the clock starts (to start the compute worker). */
  prepare?: (url: string) => Promise<void>;
  /** Run after the answer is checked, before the server shuts down. */
  cleanup?: () => Promise<void>;
}

export const OCTET = { "content-type": "application/octet-stream" };

export function tensor(shape: number[], seed: number, dtype: "f32" | "f16" = "f32"): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed) * 0.8);
  return {
    dtype,
    shape,
    data: dtype === "f16" ? new Float16Array(values) : new Float32Array(values),
  };
}

/** A small valid request: 1 x 8 x 16 video, one head of 8. */
export function smallBody(metadata: Record<string, string> = {}): Uint8Array<ArrayBuffer> {
  const t = (s: number) => tensor([1, 128, 1, 8], s);
  return encodeSafetensors({
    tensors: { q: t(1), k: t(2), v: t(3) },
    metadata: { frames: "1", height: "8", width: "16", ...metadata },
  });
}

/** A dense f16 request of `tokens` tokens, one head of 64: 4 * tokens^2 * 64 FLOPs. */
export function denseBody(tokens: number, heads = 1): Uint8Array<ArrayBuffer> {
  const t = (s: number) => tensor([1, tokens, heads, 64], s, "f16");
  return encodeSafetensors({ tensors: { q: t(1), k: t(2), v: t(3) }, metadata: { mode: "dense" } });
}

/** A body with a hand-written header (for what the writer refuses to produce) and data. */
export function rawBody(header: string, data = new Uint8Array(0)): Uint8Array<ArrayBuffer> {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** The q, k, v entries of a 1 x 1 x 1 x 4 f32 request, and their 48 data bytes. */
const QKV = `"q":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[0,16]},` +
  `"k":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[16,32]},` +
  `"v":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[32,48]}`;
const QKV_DATA = new Uint8Array(48);

export function post(url: string, body: BodyInit, headers: Record<string, string> = OCTET) {
  return fetch(url, { method: "POST", body, headers });
}

/**
 * Sends raw bytes over TCP and reads the reply as a `Response` (status and body), for requests
 * `fetch` will not send (a 16-digit Content-Length) or will not stop sending (a slow body: with
 * `trickleMs`, one more byte every `trickleMs` milliseconds until the reply comes).
 */
export async function rawRequest(url: string, text: string, trickleMs = 0): Promise<Response> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  let done = false;
  let timer: ReturnType<typeof setInterval> | undefined;
  try {
    await conn.write(new TextEncoder().encode(text));
    if (trickleMs > 0) {
      timer = setInterval(() => {
        if (!done) conn.write(new Uint8Array([0])).catch(() => clearInterval(timer));
      }, trickleMs);
    }
    let reply = "";
    const buf = new Uint8Array(65536);
    const deadline = setTimeout(() => conn.close(), 10_000);
    try {
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        reply += new TextDecoder().decode(buf.subarray(0, n));
        const head = reply.indexOf("\r\n\r\n");
        const len = /content-length: (\d+)/i.exec(reply);
        if (head >= 0 && len && reply.length >= head + 4 + Number(len[1])) break;
      }
    } finally {
      clearTimeout(deadline);
    }
    const status = /^HTTP\/1\.1 (\d{3})/.exec(reply);
    if (!status) throw new Error(`no HTTP reply: ${JSON.stringify(reply.slice(0, 200))}`);
    const head = reply.slice(0, reply.indexOf("\r\n\r\n"));
    const type = /content-type: ([^\r]+)/i.exec(head)?.[1] ?? "";
    return new Response(reply.slice(head.length + 4), {
      status: Number(status[1]),
      headers: { "content-type": type },
    });
  } finally {
    done = true;
    clearInterval(timer);
    try {
      conn.close();
    } catch {
      // closed by the deadline
    }
  }
}

/** A POST declaring a 1,000-byte body that arrives one byte every `everyMs` milliseconds. */
export function slowPost(url: string, everyMs: number): Promise<Response> {
  return rawRequest(
    url,
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n" +
      "Content-Length: 1000\r\n\r\n",
    everyMs,
  );
}

/** The request that keeps the compute slot busy in the 429 case. */
let heavy: Promise<unknown> | undefined;
/** The body of the timeout case (25 MB), built before its clock starts. */
let long: Uint8Array<ArrayBuffer> | undefined;

/** Nesting `depth` arrays deep: `[[[...]]]`. */
const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);

export const SERVE_CASES: ServeCase[] = [
  {
    input: "a text/plain POST (what any web page can send without a CORS preflight)",
    status: 415,
    code: "MEDIA_TYPE",
    field: "content-type",
    send: (url) => post(url, smallBody(), { "content-type": "text/plain" }),
  },
  {
    input: "a POST with no Content-Type",
    status: 415,
    code: "MEDIA_TYPE",
    field: "content-type",
    send: (url) => fetch(url, { method: "POST", body: smallBody() }),
  },
  {
    input: "no bearer token where `token` is set",
    status: 401,
    code: "UNAUTHORIZED",
    field: "authorization",
    options: { token: "s3cret" },
    send: (url) => post(url, smallBody()),
  },
  {
    input: "a wrong bearer token",
    status: 401,
    code: "UNAUTHORIZED",
    field: "authorization",
    options: { token: "s3cret" },
    send: (url) => post(url, smallBody(), { ...OCTET, authorization: "Bearer s3cre" }),
  },
  {
    input: "a 16-digit Content-Length (raw socket)",
    status: 413,
    code: "TOO_LARGE",
    field: "body",
    names: /Content-Length 1234567890123456 exceeds/,
    send: (url) =>
      rawRequest(
        url,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n" +
          "Content-Length: 1234567890123456\r\n\r\n",
      ),
  },
  {
    input: "a body stream that fails mid-way (what broken chunked framing gives the handler)",
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    names: /could not be read/,
    send: (_url, handler) => {
      let n = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(c) {
          if (n++ === 0) c.enqueue(new Uint8Array(16));
          else c.error(new Error("invalid chunk size"));
        },
      });
      return handler(new Request("http://127.0.0.1/", { method: "POST", body, headers: OCTET }));
    },
  },
  {
    input: "a body at 10 bytes/s, `bodyTimeoutMs` 300",
    status: 408,
    code: "TIMEOUT",
    field: "body",
    options: { bodyTimeoutMs: 300 },
    withinMs: 3000,
    send: (url) => slowPost(url, 100),
  },
  {
    input: "a POST while `maxUploads` (1) bodies are still arriving",
    status: 429,
    code: "BUSY",
    field: "server",
    names: /1 bodies are being received/,
    options: { maxUploads: 1, bodyTimeoutMs: 1500 },
    send: async (url) => {
      const slow = slowPost(url, 50);
      for (let i = 0; i < 100; i++) {
        const h = await (await fetch(`${url}/health`)).json();
        if (h.load.uploading === 1) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      const res = await post(url, smallBody());
      await slow;
      return res;
    },
  },
  {
    input: "tensor `q` twice in the header (JSON keeps the last)",
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    names: /tensor "q" appears twice/,
    send: (url) =>
      post(
        url,
        rawBody(
          `{${QKV},"q":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[0,16]}}`,
          QKV_DATA,
        ),
      ),
  },
  {
    input: 'tensor `q` twice, once spelt `"\\u0071"`',
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    send: (url) =>
      post(
        url,
        rawBody(`{${QKV.replace('"k"', '"\\u0071"')}}`, QKV_DATA),
      ),
  },
  {
    input: "`__metadata__` with `mode` twice",
    status: 400,
    code: "INVALID_INPUT",
    field: "body:__metadata__",
    names: /key "mode" appears twice/,
    send: (url) =>
      post(url, rawBody(`{"__metadata__":{"mode":"dense","mode":"draft"},${QKV}}`, QKV_DATA)),
  },
  {
    input: "`__metadata__` value nested 50,000 arrays deep",
    status: 400,
    code: "INVALID_INPUT",
    field: "body:__metadata__",
    names: /nests deeper than 3/,
    options: { maxHeaderBytes: 2 ** 20 },
    send: (url) =>
      post(
        url,
        rawBody(`{"__metadata__":{"mode":${nested(50000)}},${QKV}}`, QKV_DATA),
      ),
  },
  {
    input: "a shape nested 50,000 arrays deep",
    status: 400,
    code: "INVALID_INPUT",
    field: "body:q",
    options: { maxHeaderBytes: 2 ** 20 },
    send: (url) =>
      post(
        url,
        rawBody(
          `{${QKV.replace('"shape":[1,1,1,4]', `"shape":${nested(50000)}`)}}`,
          QKV_DATA,
        ),
      ),
  },
  {
    input: "a header of 1,000,000 empty tensors (13 MB), `maxHeaderBytes` 16 MiB",
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    names: /more than 16 header entries/,
    options: { maxHeaderBytes: 16 * 2 ** 20, maxBodyBytes: 32 * 2 ** 20 },
    withinMs: 2000,
    send: (url) => {
      const parts = Array.from({ length: 1_000_000 }, (_, i) => `"t${i}":{}`);
      return post(url, rawBody(`{${parts.join(",")}}`));
    },
  },
  {
    input: "a header over `maxHeaderBytes` (64 KiB by default)",
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    names: /exceeds the limit of 65536 bytes \(maxHeaderBytes\)/,
    send: (url) => post(url, rawBody(`{"__metadata__":{"x":"${"a".repeat(70000)}"}}`)),
  },
  {
    input: "a 4 MB `mode` value: the message quotes at most 400 characters",
    status: 400,
    code: "INVALID_OPTION",
    field: "mode",
    names: /^.{0,500}$/s,
    options: { maxHeaderBytes: 8 * 2 ** 20 },
    send: (url) =>
      post(url, rawBody(`{"__metadata__":{"mode":"${"x".repeat(4_000_000)}"},${QKV}}`, QKV_DATA)),
  },
  {
    input: "a 1 MB tensor name: the field and message are cut",
    status: 400,
    code: "INVALID_INPUT",
    field: "body",
    names: /^.{0,500}$/s,
    options: { maxHeaderBytes: 2 * 2 ** 20 },
    send: (url) => post(url, rawBody(`{"${"n".repeat(2 ** 20)}":{}}`)),
  },
  {
    input: "dense 2^13 tokens x 64 (2^34 FLOPs) over `maxFlops` 2^33",
    status: 413,
    code: "TOO_LARGE",
    field: "flops",
    names: /1\.72e\+10 FLOPs \(dense, 8192 tokens\); the budget is 8\.59e\+9/,
    options: { maxFlops: 2 ** 33 },
    withinMs: 2000,
    send: (url) => post(url, denseBody(8192)),
  },
  {
    input: "a run past `timeoutMs` (200): its worker is terminated",
    status: 503,
    code: "TIMEOUT",
    field: "timeoutMs",
    options: { timeoutMs: 200 },
    withinMs: 1500,
    prepare: async (url) => {
      // 8 heads: ~16 s on 2 cores, ~1 s on a 16-core host (1 head finished in 132 ms there,
      // before the timeout); the worker is terminated at 200 ms either way. Built here, untimed.
      long = denseBody(8192, 8);
      await (await fetch(`${url}/health`)).body?.cancel();
    },
    send: (url) => post(url, long!),
  },
  {
    input: "a POST while `maxConcurrent` (1) computes and `maxQueue` (0) wait: answered at once",
    status: 429,
    code: "BUSY",
    field: "server",
    names: /1 requests running and 0 queued/,
    options: { maxQueue: 0, timeoutMs: 10_000 },
    withinMs: 500,
    prepare: async (url) => {
      heavy = post(url, denseBody(8192)).then((r) => r.body?.cancel());
      for (let i = 0; i < 1000; i++) {
        const h = await (await fetch(`${url}/health`)).json();
        if (h.load.running === 1) return;
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    send: (url) => post(url, smallBody()),
    cleanup: async () => void await heavy,
  },
  {
    input: "`createHandler({ maxHeaderBytes: NaN })`",
    status: 0,
    code: "INVALID_OPTION",
    field: "maxHeaderBytes",
    call: () => createHandler({ maxHeaderBytes: NaN }),
  },
  {
    input: "`createHandler({ maxQueue: -1 })`",
    status: 0,
    code: "INVALID_OPTION",
    field: "maxQueue",
    call: () => createHandler({ maxQueue: -1 }),
  },
  {
    input: "`createHandler({ bodyTimeoutMs: 1.5 })`",
    status: 0,
    code: "INVALID_OPTION",
    field: "bodyTimeoutMs",
    call: () => createHandler({ bodyTimeoutMs: 1.5 }),
  },
  {
    input: "`createHandler({ maxBodyByte: 1 })` (unknown option)",
    status: 0,
    code: "INVALID_OPTION",
    field: "maxBodyByte",
    call: () => createHandler({ maxBodyByte: 1 } as HandlerOptions),
  },
  {
    input: '`createHandler({ runtime, compute: "worker" })`',
    status: 0,
    code: "INVALID_OPTION",
    field: "compute",
    call: () => {
      const runtime = Promise.reject(new Error("never used"));
      runtime.catch(() => {});
      return createHandler({ runtime, compute: "worker" });
    },
  },
  {
    input: "`deno task serve --max-body-byte 1` (unknown flag)",
    status: 0,
    code: "INVALID_OPTION",
    field: "flags",
    call: () => serveFlags(["--max-body-byte", "1"]),
  },
  {
    input: "`deno task serve --max-body-bytes 300MB`",
    status: 0,
    code: "INVALID_OPTION",
    field: "--max-body-bytes",
    call: () => serveFlags(["--max-body-bytes", "300MB"]),
  },
];

/** The section of docs/errors.md for these cases. */
export function renderServeSection(): string[] {
  return [
    `## Edge handler (${SERVE_CASES.length} hostile requests, each a test)`,
    "",
    "Sent by test/serve_test.ts to a real server on 127.0.0.1 (WebAssembly backend); HTTP",
    '"-" is an option or flag that `createHandler()` or `deno task serve` rejects at start.',
    "Besides the library's codes the handler answers `METHOD` (405), `UNAUTHORIZED` (401),",
    "`TIMEOUT` (408 for a body, 503 for a run), `MEDIA_TYPE` (415) and `BUSY` (429).",
    "docs/serve.md explains each limit.",
    "",
    "| # | request | HTTP | code | field |",
    "|---|---|---|---|---|",
    ...SERVE_CASES.map((c, i) =>
      `| ${i + 1} | ${c.input.replace(/\|/g, "\\|")} | ${
        c.status || "-"
      } | \`${c.code}\` | \`${c.field}\` |`
    ),
    "",
  ];
}
