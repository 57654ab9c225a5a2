/**
 * One attention request described by strings (safetensors `__metadata__` of the edge function,
 * flags of the CLI) plus the q, k, v tensors: parsed, checked against the tensor shapes, and run
 * on a runtime with a small cache of built ops.
 *
 * @module
 */
import { describeValue, DraftAttentionError } from "./errors.ts";
import { getModel } from "./models.ts";
import { resolveDense, resolveDraft } from "./validate.ts";
import type { Tensor } from "./_tensor.ts";
import type { AttentionOp, DraftAttentionOp, Runtime } from "./runtime.ts";
import type {
  AttentionOptions,
  BackendKind,
  DraftAttentionOptions,
  Layout,
  TensorArray,
} from "./types.ts";

/** Request fields, every value a string as metadata and flags give them. */
export const REQUEST_FIELDS = [
  "mode",
  "model",
  "layout",
  "frames",
  "height",
  "width",
  "textTokens",
  "textPosition",
  "heads",
  "headDim",
  "pool",
  "sparsity",
  "scale",
] as const;

/** A request field name. */
export type RequestField = typeof REQUEST_FIELDS[number];

/** A parsed, shape-checked request. */
export type AttentionRequest =
  | { mode: "dense"; options: AttentionOptions; key: string }
  | { mode: "draft"; options: DraftAttentionOptions; key: string };

/** What one run produced. */
export interface AttentionResult {
  out: TensorArray;
  backend: BackendKind;
  /** Time of `op.run()` alone, in milliseconds. */
  ms: number;
  /** Draft only: kept share of video block pairs. */
  density?: number;
  /** Draft only: video blocks per sequence. */
  g?: number;
}

const INT_FIELDS = new Set(["frames", "height", "width", "textTokens", "heads", "headDim"]);
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function bad(field: string, detail: string): never {
  throw new DraftAttentionError("INVALID_OPTION", field, detail);
}

function parseInt32(field: string, s: string): number {
  if (!/^\d{1,10}$/.test(s)) bad(field, `must be an integer, got ${describeValue(s)}`);
  return Number(s);
}

function parsePool(s: string): [number, number] {
  const m = /^\[?\s*(\d{1,10})\s*[,x]\s*(\d{1,10})\s*\]?$/.exec(s);
  if (!m) bad("pool", `must be "HxW", "H,W" or "[H, W]", got ${describeValue(s)}`);
  return [Number(m[1]), Number(m[2])];
}

/**
 * Turns string fields into runtime options. Unknown field names are errors (a typo such as
 * `sparsty` must not silently run at the default), except `format`, which PyTorch's
 * `save_file` adds to every file.
 */
export function parseFields(
  fields: Readonly<Record<string, string | undefined>>,
): { mode: "draft" | "dense"; options: Record<string, unknown> } {
  const options: Record<string, unknown> = {};
  let mode: "draft" | "dense" = "draft";
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined || name === "format") continue;
    if (!(REQUEST_FIELDS as readonly string[]).includes(name)) {
      bad(name, `is not a known field; known: ${REQUEST_FIELDS.join(", ")}`);
    }
    if (typeof value !== "string") bad(name, `must be a string, got ${describeValue(value)}`);
    if (name === "mode") {
      if (value !== "draft" && value !== "dense") {
        bad("mode", `must be "draft" or "dense", got ${describeValue(value)}`);
      }
      mode = value;
    } else if (INT_FIELDS.has(name)) options[name] = parseInt32(name, value);
    else if (name === "sparsity" || name === "scale") {
      if (!DECIMAL.test(value)) bad(name, `must be a number, got ${describeValue(value)}`);
      options[name] = Number(value);
    } else if (name === "pool") options.pool = parsePool(value);
    else options[name] = value; // model, layout, textPosition: checked by the runtime
  }
  return { mode, options };
}

/** Reads `[batch, tokens, heads, headDim]` off q, checking k and v agree with it. */
function shapeOf(
  layout: Layout,
  q: Tensor,
  k: Tensor,
  v: Tensor,
): { batch: number; tokens: number; heads: number; headDim: number } {
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.shape.length !== 4) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        name,
        `must have 4 dimensions (${
          layout === "BSHD" ? "[batch, tokens, heads, headDim]" : "[batch, heads, tokens, headDim]"
        }), got shape ${describeValue(t.shape)}`,
      );
    }
    if (t.dtype !== q.dtype) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        name,
        `dtype ${t.dtype} differs from q's dtype ${q.dtype}`,
      );
    }
    if (t.shape.join() !== q.shape.join()) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        name,
        `shape ${describeValue(t.shape)} differs from q's shape ${describeValue(q.shape)}`,
      );
    }
  }
  const [b, x, y, headDim] = q.shape;
  return layout === "BSHD"
    ? { batch: b, tokens: x, heads: y, headDim }
    : { batch: b, tokens: y, heads: x, headDim };
}

/**
 * Builds the request for q, k, v and string fields: layout and dtype from the fields and
 * tensors, batch/heads/headDim from the shape (fields `heads`/`headDim`, when given, must
 * agree), and for draft mode the geometry, which must account for exactly the tokens of q.
 */
export function buildRequest(
  args: { fields: Readonly<Record<string, string | undefined>>; q: Tensor; k: Tensor; v: Tensor },
): AttentionRequest {
  const { mode, options } = parseFields(args.fields);
  const layout = (options.layout ?? "BSHD") as Layout;
  if (layout !== "BSHD" && layout !== "BHSD") {
    throw new DraftAttentionError(
      "UNSUPPORTED",
      "layout",
      `must be "BSHD" or "BHSD", got ${describeValue(layout)}`,
    );
  }
  const shape = shapeOf(layout, args.q, args.k, args.v);
  for (const f of ["heads", "headDim"] as const) {
    if (options[f] !== undefined && options[f] !== shape[f]) {
      throw new DraftAttentionError(
        "INVALID_INPUT",
        "q",
        `${layout} shape ${describeValue(args.q.shape)} has ${f} ${shape[f]}, the request says ${
          options[f]
        }`,
      );
    }
  }
  const common = {
    batch: shape.batch,
    heads: shape.heads,
    headDim: shape.headDim,
    layout,
    dtype: args.q.dtype,
    scale: options.scale as number | undefined,
  };
  if (mode === "dense") {
    const dense: AttentionOptions = { ...common, tokens: shape.tokens };
    return { mode, options: dense, key: JSON.stringify(["dense", resolveDense(dense)]) };
  }
  const model = options.model === undefined ? undefined : getModel(options.model as string);
  const draft: DraftAttentionOptions = {
    frames: model?.frames,
    height: model?.height,
    width: model?.width,
    textTokens: model?.textTokens,
    textPosition: model?.textPosition,
    pool: model?.pool,
    sparsity: model?.sparsity,
    ...Object.fromEntries(Object.entries(options).filter(([f]) => f !== "model")),
    ...common,
  };
  const spec = resolveDraft(draft);
  if (spec.tokens !== shape.tokens) {
    throw new DraftAttentionError(
      "INVALID_INPUT",
      "q",
      `${layout} shape ${describeValue(args.q.shape)} has ${shape.tokens} tokens; the geometry ` +
        `(${spec.frames} x ${spec.height} x ${spec.width} video + ${spec.textTokens} text) ` +
        `has ${spec.tokens}`,
    );
  }
  return { mode, options: draft, key: JSON.stringify(["draft", spec]) };
}

function buildOp(runtime: Runtime, request: AttentionRequest): AttentionOp {
  return request.mode === "dense"
    ? runtime.attention(request.options)
    : runtime.draftAttention(request.options);
}

/**
 * Built ops by request key, so that repeated requests of one size skip planning and pipeline
 * builds. An op is taken out while it runs (ops are not reentrant) and put back afterwards;
 * at most `max` idle ops are kept, the least recently used disposed first.
 */
export class OpCache {
  readonly #idle = new Map<string, AttentionOp[]>();
  #count = 0;

  constructor(readonly max = 4) {}

  take(runtime: Runtime, request: AttentionRequest): AttentionOp {
    const list = this.#idle.get(request.key);
    const op = list?.pop();
    if (op) {
      this.#count--;
      if (list!.length === 0) this.#idle.delete(request.key);
      return op;
    }
    return buildOp(runtime, request);
  }

  give(key: string, op: AttentionOp): void {
    const list = this.#idle.get(key) ?? [];
    this.#idle.delete(key); // re-insert: Map order is the recency order
    list.push(op);
    this.#idle.set(key, list);
    this.#count++;
    while (this.#count > this.max) {
      const [oldKey, oldList] = this.#idle.entries().next().value!;
      oldList.shift()!.dispose();
      this.#count--;
      if (oldList.length === 0) this.#idle.delete(oldKey);
    }
  }

  clear(): void {
    for (const list of this.#idle.values()) for (const op of list) op.dispose();
    this.#idle.clear();
    this.#count = 0;
  }
}

/** Runs a request (taking a cached op when one fits) and measures `run()`. */
export async function runRequest(
  args: {
    runtime: Runtime;
    request: AttentionRequest;
    q: Tensor;
    k: Tensor;
    v: Tensor;
    cache?: OpCache;
  },
): Promise<AttentionResult> {
  const { runtime, request, cache } = args;
  const op = cache ? cache.take(runtime, request) : buildOp(runtime, request);
  let ok = false;
  try {
    const t0 = performance.now();
    const out = await op.run(args.q.data, args.k.data, args.v.data);
    const ms = performance.now() - t0;
    const result: AttentionResult = { out, backend: runtime.backend, ms };
    if (request.mode === "draft") {
      const draftOp = op as DraftAttentionOp;
      result.density = (await draftOp.lastMask()).density;
      result.g = draftOp.g;
    }
    ok = true;
    return result;
  } finally {
    if (ok && cache) cache.give(request.key, op);
    else op.dispose();
  }
}
