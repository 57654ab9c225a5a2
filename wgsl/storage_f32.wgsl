// Storage block for f32 tensors, included by `// @include storage` (see src/webgpu/specialize.ts;
// wgsl/storage_f16.wgsl is the f16 one): `Store4` is what q, k, v and out hold per vec4 of a
// row, `load4` / `store4` convert it to and from the f32 arithmetic.
alias Store4 = vec4<f32>;
fn load4(x: Store4) -> vec4<f32> {
  return x;
}
fn store4(x: vec4<f32>) -> Store4 {
  return x;
}
