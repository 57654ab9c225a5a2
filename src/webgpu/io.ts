/**
 * Input and output of a WebGPU op: the upload and readback buffers of `run(q, k, v)` and their
 * writes, the BSHD gathers and scatters of an op split per head, the read-backs (map, use,
 * unmap; failures as typed errors), the bound range of a caller's buffer for one piece, and the
 * checks of caller buffers (before a run, and after WebGPU rejected one).
 *
 * @module
 */
import { DraftAttentionError } from "../errors.ts";
import type { DenseSpec, GpuRunArgs, TensorArray } from "../types.ts";
import type { GpuContext } from "./context.ts";
import type { Kernel } from "./kernel.ts";
import type { Piece } from "./pieces.ts";

/** The tensors of a run, caller buffers or the op's own. */
export const TENSORS = ["q", "k", "v", "out"] as const;
/** One tensor of a run. */
export type TensorName = typeof TENSORS[number];

/** A tensor range bound for one piece, and the vec4 offset of the piece inside it. */
export interface Slice {
  binding: GPUBufferBinding;
  base4: number;
}

/** Upload/readback buffers of run(q, k, v) for one piece. */
export interface Uploads {
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  out: GPUBuffer;
  read: GPUBuffer;
}

/** Makes an op-owned buffer that `extraBytes` does not count (the op's `#ioBuffer`). */
export type IoBuffer = (label: string, size: number, usage: GPUBufferUsageFlags) => GPUBuffer;

/** What the read-backs need of their op: its context, and whether it has been disposed. */
export interface Reader {
  ctx: GpuContext;
  disposed(): boolean;
}

/** The upload and readback buffers of a piece of `bytes` bytes. */
export function makeUploads(bytes: number, ioBuffer: IoBuffer): Uploads {
  const U = GPUBufferUsage;
  return {
    q: ioBuffer("q", bytes, U.STORAGE | U.COPY_DST),
    k: ioBuffer("k", bytes, U.STORAGE | U.COPY_DST),
    v: ioBuffer("v", bytes, U.STORAGE | U.COPY_DST),
    out: ioBuffer("out", bytes, U.STORAGE | U.COPY_SRC),
    read: ioBuffer("out read", bytes, U.MAP_READ | U.COPY_DST),
  };
}

/**
 * Writes a piece of q, k and v to its upload buffers: the piece's bytes as they are, or with
 * `heads` (a split BSHD op) gathered in BHSD order.
 */
export function writeUploads(
  queue: GPUQueue,
  io: Uploads,
  piece: Piece,
  inputs: { q: TensorArray; k: TensorArray; v: TensorArray; eb: number; heads?: HeadStaging },
): void {
  const { elemOffset, elems } = piece;
  const { q, k, v, eb, heads } = inputs;
  for (const [buf, src] of [[io.q, q], [io.k, k], [io.v, v]] as const) {
    const bytes = heads ? heads.toHeads(src, piece) : new Uint8Array(
      src.buffer,
      src.byteOffset + elemOffset * eb,
      elems * eb,
    );
    // writeBuffer copies the bytes at the call, so the staging can be reused.
    queue.writeBuffer(buf, 0, bytes as Uint8Array<ArrayBuffer>);
  }
}

/** The host staging of one piece in BHSD order (typed-array runs of a split BSHD op). */
export class HeadStaging {
  readonly #spec: DenseSpec;
  readonly #eb: number;
  /** Elements of the largest piece: the staging holds any piece. */
  readonly #most: number;
  #staging?: ArrayBuffer;

  constructor(spec: DenseSpec, pieces: Piece[]) {
    this.#spec = spec;
    this.#eb = spec.dtype === "f16" ? 2 : 4;
    this.#most = Math.max(...pieces.map((p) => p.elems));
  }

  /**
   * The piece's (batch, head) pairs of a BSHD typed array, gathered in BHSD order (each head's
   * tokens contiguous, as the op's buffers hold them) into the reused staging buffer.
   */
  toHeads(src: TensorArray, piece: Piece): Uint8Array {
    const bytes = piece.elems * this.#eb;
    if (!this.#staging || this.#staging.byteLength < bytes) {
      this.#staging = new ArrayBuffer(this.#most * this.#eb);
    }
    const staging = new Uint8Array(this.#staging, 0, bytes);
    copyHeads(
      new Uint8Array(src.buffer, src.byteOffset, src.byteLength),
      staging,
      this.#spec,
      piece,
      true,
    );
    return staging;
  }
}

/**
 * Maps `buffers` for reading (all requested at once) and hands each to `use` as soon as it is
 * mapped, in order, unmapping it after; failures as in {@linkcode mapAll}.
 */
export async function mapEach(
  op: Reader,
  buffers: GPUBuffer[],
  use: (i: number, buffer: GPUBuffer) => void,
): Promise<void> {
  const maps = buffers.map((b) => b.mapAsync(GPUMapMode.READ));
  // Rejections of maps not awaited below (after an earlier failure) are handled there.
  for (const m of maps) m.catch(() => {});
  try {
    for (let i = 0; i < buffers.length; i++) {
      await maps[i];
      if (op.ctx.lost) throw op.ctx.lostError();
      use(i, buffers[i]);
      buffers[i].unmap();
    }
  } catch (e) {
    await Promise.allSettled(maps);
    await failedMaps(op, buffers, e);
  }
}

/** Unmaps what is mapped after a failed read-back and throws the error it means. */
async function failedMaps(op: Reader, buffers: GPUBuffer[], e: unknown): Promise<never> {
  for (const b of buffers) {
    try {
      if (b.mapState === "mapped") b.unmap();
    } catch {
      // A buffer of a lost device may refuse to unmap; it is destroyed with the op.
    }
  }
  if (op.disposed()) throw new DraftAttentionError("DISPOSED", "op", "disposed during a run");
  throw await op.ctx.failure("reading back", e);
}

/** Maps every buffer of `buffers` for reading; a failure unmaps them and throws a typed error. */
export async function mapAll(op: Reader, buffers: GPUBuffer[]): Promise<void> {
  try {
    await Promise.all(buffers.map((b) => b.mapAsync(GPUMapMode.READ)));
    // A destroyed device may still resolve maps; its loss is known by now.
    if (op.ctx.lost) throw op.ctx.lostError();
  } catch (e) {
    await failedMaps(op, buffers, e);
  }
}

/**
 * The bound range of a caller's buffer for one piece (offset aligned down, base in vec4), for
 * elements of `eb` bytes.
 */
export function slice(ctx: GpuContext, buffer: GPUBuffer, piece: Piece, eb: number): Slice {
  const align = ctx.limits.minStorageBufferOffsetAlignment;
  const start = piece.elemOffset * eb;
  const offset = Math.floor(start / align) * align;
  const end = (piece.elemOffset + piece.elems) * eb;
  return {
    binding: { buffer, offset, size: end - offset },
    base4: (start - offset) / (4 * eb),
  };
}

/** Synchronous checks of caller buffers: size, usage, map state, aliasing. */
export function checkBuffers(spec: DenseSpec, args: GpuRunArgs): void {
  const eb = spec.dtype === "f16" ? 2 : 4;
  const bytes = spec.batch * spec.tokens * spec.heads * spec.headDim * eb;
  const shape = spec.layout === "BSHD"
    ? `[${spec.batch}, ${spec.tokens}, ${spec.heads}, ${spec.headDim}]`
    : `[${spec.batch}, ${spec.heads}, ${spec.tokens}, ${spec.headDim}]`;
  for (const t of TENSORS) {
    const b = args[t];
    if (b.size < bytes) {
      throw new DraftAttentionError(
        "INVALID_BUFFER",
        t,
        `holds ${b.size} bytes; ${spec.layout} ${shape} ${spec.dtype} needs ${bytes}`,
      );
    }
    if (!(b.usage & GPUBufferUsage.STORAGE)) {
      throw new DraftAttentionError(
        "INVALID_BUFFER",
        t,
        `lacks GPUBufferUsage.STORAGE (usage flags ${b.usage})`,
      );
    }
    if (b.mapState !== "unmapped") {
      throw new DraftAttentionError(
        "INVALID_BUFFER",
        t,
        `is ${b.mapState === "mapped" ? "mapped" : "being mapped"}; unmap it before a run`,
      );
    }
  }
  for (const t of ["q", "k", "v"] as const) {
    if (args.out === args[t]) {
      throw new DraftAttentionError(
        "INVALID_BUFFER",
        "out",
        `is the same GPUBuffer as ${t}; the output needs its own buffer`,
      );
    }
  }
}

/** What {@linkcode diagnose} binds: the op's flash kernel, a params buffer and a dummy. */
export interface Probe {
  ctx: GpuContext;
  flash: Kernel;
  params: GPUBuffer;
  dummy: GPUBuffer;
}

/**
 * After a failed run on caller buffers: finds the buffer WebGPU rejects (destroyed, or from
 * another device) by binding each alone; `INVALID_BUFFER` for it, else the original error.
 */
export async function diagnose(
  probe: Probe,
  args: GpuRunArgs,
  error: unknown,
): Promise<unknown> {
  if (probe.ctx.lost || !(error instanceof DraftAttentionError) || error.code !== "GPU_ERROR") {
    return error;
  }
  const ctx = probe.ctx;
  for (const t of TENSORS) {
    const [, errors] = ctx.scoped(`checking ${t}`, () => {
      const enc = ctx.device.createCommandEncoder({ label: `check ${t}` });
      const pass = enc.beginComputePass();
      const size = Math.min(16, Math.floor(args[t].size / 4) * 4);
      pass.setBindGroup(
        0,
        probe.flash.bind({ ...probeBindings(probe), [t]: { buffer: args[t], size } }),
      );
      pass.end();
      ctx.device.queue.submit([enc.finish()]);
    });
    try {
      await errors;
    } catch (e) {
      return new DraftAttentionError(
        "INVALID_BUFFER",
        t,
        `was rejected by WebGPU (destroyed, or created on another device): ${
          e instanceof Error ? e.message : String(e)
        }`,
        { cause: e },
      );
    }
  }
  return error;
}

function probeBindings(probe: Probe): Record<string, GPUBuffer> {
  const d = probe.dummy;
  return {
    params: probe.params,
    q: d,
    k: d,
    v: d,
    out: d,
    table: d,
    counts: d,
    lists: d,
  };
}

/**
 * Copies the rows of pairs [bh0, bh0 + nbh) between a whole BSHD tensor (`bshd`, bytes) and a
 * piece in BHSD order (`heads`, bytes): `toHeads` gathers into `heads`, else scatters back. Rows
 * move as 32-bit words where both ends are 4-byte aligned (always for f32; f16 rows are
 * headDim * 2 bytes, a multiple of 8), else as 16-bit halves. Token by token, so that the BSHD
 * side (the piece's heads of a token are adjacent) is walked in memory order: 1.7x faster than
 * head by head for HunyuanVideo's 780 MB tensors.
 */
export function copyHeads(
  bshd: Uint8Array,
  heads: Uint8Array,
  spec: DenseSpec,
  piece: Piece,
  toHeads: boolean,
): void {
  const { tokens: N, heads: H, headDim: D } = spec;
  const eb = spec.dtype === "f16" ? 2 : 4;
  const wide = bshd.byteOffset % 4 === 0 && heads.byteOffset % 4 === 0;
  const unit = wide ? 4 : 2;
  const view = (x: Uint8Array) =>
    wide
      ? new Uint32Array(x.buffer, x.byteOffset, x.byteLength / 4)
      : new Uint16Array(x.buffer, x.byteOffset, x.byteLength / 2);
  const a = view(bshd), b = view(heads);
  const row = (D * eb) / unit;
  // Runs of pairs inside one batch element: pairs x0.. of the piece are heads h0.. of `batch`.
  for (let x0 = 0; x0 < piece.nbh;) {
    const bh0 = piece.bh0 + x0;
    const batch = Math.floor(bh0 / H), h0 = bh0 % H;
    const n = Math.min(piece.nbh - x0, H - h0);
    for (let t = 0; t < N; t++) {
      const at0 = ((batch * N + t) * H + h0) * row;
      for (let x = 0; x < n; x++) {
        const at = at0 + x * row;
        const to = ((x0 + x) * N + t) * row;
        if (toHeads) { for (let w = 0; w < row; w++) b[to + w] = a[at + w]; }
        else for (let w = 0; w < row; w++) a[at + w] = b[to + w];
      }
    }
    x0 += n;
  }
}
