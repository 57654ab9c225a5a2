#!/bin/sh
# Packs onnxruntime-web's WebGPU build (the peer row of `deno task bench`, bench/_ort_webgpu.ts)
# for a machine that reaches no registry: the bundle and its one .wasm, gzip -9 (tar xzf works
# on every machine that unpacks Deno; xz -9 would be 3.7 MB instead of 6.6 MB), plus
# .device-ort/enter.sh, which unpacks them to /tmp/ort and exports DRAFTATTN_ORT.
# Usage, from the project root: sh scripts/pack_ort.sh   (.device-ort/ is git-ignored)
set -eu
VERSION=1.30.0
FILES="ort.webgpu.bundle.min.mjs ort-wasm-simd-threaded.asyncify.wasm"
# Fetches the pinned package into Deno's global npm cache (nodeModulesDir is "none": no
# node_modules, so the runtime tasks never install it); this step needs the registry.
deno cache --lock=deno.lock "npm:onnxruntime-web@$VERSION/webgpu"
NPM_CACHE=$(deno info --json | sed -n 's/.*"npmCache": "\(.*\)".*/\1/p')
DIST=$NPM_CACHE/registry.npmjs.org/onnxruntime-web/$VERSION/dist
mkdir -p .device-ort
# shellcheck disable=SC2086
tar -C "$DIST" -cf - $FILES | gzip -9n > ".device-ort/ort-webgpu-$VERSION.tgz"
cat > .device-ort/enter.sh <<EOS
# Sourced from the project root: unpacks onnxruntime-web $VERSION (WebGPU build) to /tmp/ort
# and points the bench at it (bench/_ort_webgpu.ts reads DRAFTATTN_ORT).
mkdir -p /tmp/ort
tar xzf .device-ort/ort-webgpu-$VERSION.tgz -C /tmp/ort
export DRAFTATTN_ORT=/tmp/ort/ort.webgpu.bundle.min.mjs
EOS
# .git is a file in a worktree: ask git where the exclude file is.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.device-ort/' "$exclude" 2>/dev/null || echo '/.device-ort/' >> "$exclude"
ls -l .device-ort/
