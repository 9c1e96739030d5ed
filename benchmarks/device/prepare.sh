#!/usr/bin/env bash
# Prepare, on the development machine, what the GPU call carries (benchmarks/device/README.md):
#   bench-data/         the real photos of ../shared/data (catalog-photos/, clothing/: 44 MB)
#   .ortgpu/1 .. N/     with --ort-gpu: the onnxruntime-gpu wheel in pieces of at most 56 MiB,
#                       each folder with SHA256SUMS, one folder per `run` call
# Both are ignored through .git/info/exclude (this clone only), so they travel only when carried.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${SHARED:-../shared/data}
ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}  # CUDA 13 build: the device's torch (cu130) brings its libraries
PIECE=${PIECE:-56m}

for ignored in /bench-data/ /.ortgpu/ /.ortgpu-wheel/; do
  grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >>.git/info/exclude
done

rm -rf bench-data
mkdir -p bench-data
cp -r "$SHARED/catalog-photos" "$SHARED/clothing" bench-data/
echo "bench-data: $(find bench-data -name '*.jpg' | wc -l) photos, $(du -sh bench-data | cut -f1)"

if [ "${1:-}" = "--ort-gpu" ]; then
  rm -rf .ortgpu .ortgpu-wheel
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d .ortgpu-wheel "onnxruntime-gpu==${ORT_GPU_VERSION}"
  wheel=$(ls .ortgpu-wheel/onnxruntime_gpu-*.whl)
  sums=$(cd .ortgpu-wheel && sha256sum "$(basename "$wheel")")
  mkdir -p .ortgpu/split
  split -b "$PIECE" -d -a 2 "$wheel" .ortgpu/split/piece-
  n=0
  for piece in .ortgpu/split/piece-*; do
    n=$((n + 1))
    mkdir -p ".ortgpu/$n"
    mv "$piece" ".ortgpu/$n/"
    echo "$sums" >".ortgpu/$n/SHA256SUMS"
  done
  rmdir .ortgpu/split
  echo "onnxruntime-gpu ${ORT_GPU_VERSION}: $(du -h "$wheel" | cut -f1) in $n pieces: carry .ortgpu/1 .. .ortgpu/$n, one per call"
fi
