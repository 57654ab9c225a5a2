// Storage block for f16 tensors, included by `// @include storage` in place of
// wgsl/storage_f32.wgsl (see src/webgpu/specialize.ts). Four halves travel as one vec2<u32>
// (8 bytes), converted with unpack2x16float/pack2x16float, so f16 works without the
// shader-f16 feature. Accumulation stays f32.
alias Store4 = vec2<u32>;
fn load4(x: Store4) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(x.x), unpack2x16float(x.y));
}
fn store4(x: vec4<f32>) -> Store4 {
  return vec2<u32>(pack2x16float(x.xy), pack2x16float(x.zw));
}
