#!/usr/bin/env bash
# Puts NVIDIA's PTX assembler (ptxas) in the cache and prints its path, for the offline
# checks of the GPU kernels (compiler/tests/ptx.rs assembles every emitted PTX file for
# sm_80 and sm_90). ptxas comes from the `nvidia-cuda-nvcc-cu12` PyPI wheel, pinned so
# that every run checks against the same assembler; nothing of CUDA is needed to build
# or run mcc itself (the driver JIT-compiles the embedded PTX at run time).
#
# Idempotent: a second run finds the extracted wheel and only prints the path.
# Environment: MCC_CACHE (default ~/.cache/mcc); the wheel goes to $MCC_CACHE/cuda.
set -euo pipefail
VERSION=12.6.85
cache="${MCC_CACHE:-$HOME/.cache/mcc}"
dest="$cache/cuda/nvcc-$VERSION"
ptxas="$dest/nvidia/cuda_nvcc/bin/ptxas"
if [[ ! -x "$ptxas" ]]; then
    mkdir -p "$cache/cuda"
    tmp="$(mktemp -d "$cache/cuda/.fetch-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3 \
        -d "$tmp" "nvidia-cuda-nvcc-cu12==$VERSION" >&2
    wheel="$(ls "$tmp"/nvidia_cuda_nvcc_cu12-*.whl)"
    mkdir -p "$tmp/x"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$wheel" "$tmp/x"
    chmod +x "$tmp/x/nvidia/cuda_nvcc/bin/"*
    rm -rf "$dest"
    mv "$tmp/x" "$dest"
fi
"$ptxas" --version >/dev/null
echo "$ptxas"
