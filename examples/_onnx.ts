/**
 * Just enough ONNX to build the example's graphs in code: a protobuf writer of a few lines and
 * a model of MatMul / Add nodes with f32 initializers. Real deployments export their graphs
 * from PyTorch; the example writes tiny ones so that it needs no model file.
 *
 * @module
 */

/** A protobuf field: number, wire type, value (a nested message is a list of fields). */
type Field = [number, "varint" | "bytes", number | string | Uint8Array | Field[]];

function varint(n: number, out: number[]): void {
  do {
    const b = n % 128;
    n = Math.floor(n / 128);
    out.push(n > 0 ? b | 128 : b);
  } while (n > 0);
}

function message(fields: Field[]): Uint8Array {
  const out: number[] = [];
  for (const [no, kind, value] of fields) {
    if (kind === "varint") {
      varint(no * 8, out);
      varint(value as number, out);
      continue;
    }
    const bytes = typeof value === "string"
      ? new TextEncoder().encode(value)
      : value instanceof Uint8Array
      ? value
      : message(value as Field[]);
    varint(no * 8 + 2, out);
    varint(bytes.length, out);
    for (const b of bytes) out.push(b);
  }
  return Uint8Array.from(out);
}

/** ValueInfoProto of an f32 tensor (TypeProto.Tensor, elem_type 1 = FLOAT). */
function f32Info(no: number, name: string, dims: number[]): Field {
  const shape: Field[] = dims.map((d) => [1, "bytes", [[1, "varint", d]]]);
  return [no, "bytes", [[1, "bytes", name], [2, "bytes", [[1, "bytes", [
    [1, "varint", 1],
    [2, "bytes", shape],
  ]]]]]];
}

/** A graph of MatMul / Add nodes over f32 tensors. */
export interface GraphSpec {
  /** Graph inputs and their shapes. */
  inputs: Record<string, number[]>;
  /** Graph outputs and their shapes. */
  outputs: Record<string, number[]>;
  /** Constant weights: row-major f32 data and shape. */
  initializers: Record<string, { dims: number[]; data: Float32Array }>;
  /** Nodes in order: `[op, inputs, output]`. */
  nodes: ["MatMul" | "Add", string[], string][];
}

/** ModelProto (IR 8, opset 17) of the graph. */
export function onnxModel(spec: GraphSpec): Uint8Array {
  const graph: Field[] = [];
  spec.nodes.forEach(([op, inputs, output], i) => {
    graph.push([1, "bytes", [
      ...inputs.map((x): Field => [1, "bytes", x]),
      [2, "bytes", output],
      [3, "bytes", `${op.toLowerCase()}${i}`],
      [4, "bytes", op],
    ]]);
  });
  graph.push([2, "bytes", "dit block part"]);
  for (const [name, { dims, data }] of Object.entries(spec.initializers)) {
    // TensorProto: dims (1), data_type (2) FLOAT = 1, name (8), raw_data (9, little-endian).
    graph.push([5, "bytes", [
      ...dims.map((d): Field => [1, "varint", d]),
      [2, "varint", 1],
      [8, "bytes", name],
      [9, "bytes", new Uint8Array(data.buffer, data.byteOffset, data.byteLength)],
    ]]);
  }
  for (const [name, dims] of Object.entries(spec.inputs)) graph.push(f32Info(11, name, dims));
  for (const [name, dims] of Object.entries(spec.outputs)) graph.push(f32Info(12, name, dims));
  return message([
    [1, "varint", 8],
    [2, "bytes", "draftattn example"],
    [8, "bytes", [[1, "bytes", ""], [2, "varint", 17]]],
    [7, "bytes", graph],
  ]);
}
