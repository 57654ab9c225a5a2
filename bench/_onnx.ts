/**
 * One-node ONNX models for the onnxruntime-web peers (bench/peers.ts, bench/_ort_webgpu.ts),
 * written with a protobuf writer of a few lines: no ONNX tooling needed.
 */

/** A protobuf field: number, wire type, value (a nested message is a list of fields). */
export type Field = [number, "varint" | "f32" | "bytes", number | string | Field[]];

function varint(n: number, out: number[]): void {
  do {
    const b = n % 128;
    n = Math.floor(n / 128);
    out.push(n > 0 ? b | 128 : b);
  } while (n > 0);
}

/** Serialises a protobuf message. */
export function message(fields: Field[]): Uint8Array {
  const out: number[] = [];
  for (const [no, kind, value] of fields) {
    if (kind === "varint") {
      varint(no * 8, out);
      varint(value as number, out);
    } else if (kind === "f32") {
      varint(no * 8 + 5, out);
      out.push(...new Uint8Array(Float32Array.of(value as number).buffer));
    } else {
      const bytes = typeof value === "string"
        ? new TextEncoder().encode(value)
        : message(value as Field[]);
      varint(no * 8 + 2, out);
      varint(bytes.length, out);
      out.push(...bytes);
    }
  }
  return Uint8Array.from(out);
}

/** TensorProto.DataType: FLOAT = 1, FLOAT16 = 10. */
export type ElemType = 1 | 10;

/** ValueInfoProto of a tensor (TypeProto.Tensor elem_type: 1 = FLOAT, 10 = FLOAT16). */
export function tensorInfo(
  no: number,
  name: string,
  dims: number[],
  elemType: ElemType = 1,
): Field {
  const shape: Field[] = dims.map((d) => [1, "bytes", [[1, "varint", d]]]);
  return [no, "bytes", [[1, "bytes", name], [2, "bytes", [[1, "bytes", [[1, "varint", elemType], [
    2,
    "bytes",
    shape,
  ]]]]]]];
}

/**
 * ModelProto (IR 8, opsets "" 17 and com.microsoft 1) of one MultiHeadAttention node:
 * q, k, v [batch, tokens, heads * headDim] -> o, the BSHD layout read as 3-D. The scale
 * defaults to 1 / sqrt(headDim); `float16` makes every tensor FLOAT16 instead of FLOAT.
 */
export function mhaModel(
  batch: number,
  tokens: number,
  heads: number,
  headDim: number,
  opts: { float16?: boolean; scale?: number } = {},
): Uint8Array {
  const dims = [batch, tokens, heads * headDim];
  const elem: ElemType = opts.float16 ? 10 : 1;
  const node: Field[] = [
    [1, "bytes", "q"],
    [1, "bytes", "k"],
    [1, "bytes", "v"],
    [2, "bytes", "o"],
    [3, "bytes", "attention"],
    [4, "bytes", "MultiHeadAttention"],
    [7, "bytes", "com.microsoft"],
    // AttributeProto: name, i (3) or f (2), type (20): INT = 2, FLOAT = 1.
    [5, "bytes", [[1, "bytes", "num_heads"], [3, "varint", heads], [20, "varint", 2]]],
    [5, "bytes", [
      [1, "bytes", "scale"],
      [2, "f32", opts.scale ?? 1 / Math.sqrt(headDim)],
      [20, "varint", 1],
    ]],
  ];
  const graph: Field[] = [
    [1, "bytes", node],
    [2, "bytes", "attention"],
    tensorInfo(11, "q", dims, elem),
    tensorInfo(11, "k", dims, elem),
    tensorInfo(11, "v", dims, elem),
    tensorInfo(12, "o", dims, elem),
  ];
  return message([
    [1, "varint", 8],
    [2, "bytes", "draftattn bench"],
    [8, "bytes", [[1, "bytes", ""], [2, "varint", 17]]],
    [8, "bytes", [[1, "bytes", "com.microsoft"], [2, "varint", 1]]],
    [7, "bytes", graph],
  ]);
}
