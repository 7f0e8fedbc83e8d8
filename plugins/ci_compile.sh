#!/usr/bin/env bash
# CI compile check of the native code (no GPU needed):
#   1. plugins/kernels with nvcc for sm_80 and sm_90 (through CMake), every algorithm: the cuBLAS one
#      (cublas-pointwise) when cuBLAS is found (the CUDA toolkit's, CUBLAS_ROOT, or the nvidia-cublas wheel of
#      the python on PATH; DYCONV_CI_REQUIRE_CUBLAS=1 fails without it), else it prints that it was left out;
#      the WMMA ones (tensor-core-fused, -aggregated, -experts: TF32 needs sm_80) with their 48 KB shared-memory
#      and layout static_asserts; then dynamic_conv.cu alone for sm_75 (a torch extension built for an older GPU),
#      where that kernel is empty;
#      and the torch binding (plugins/torch/dyconv_torch.cpp) against the installed torch's headers, syntax only;
#   2. the TensorRT plugin library, when TensorRT headers are found (TENSORRT_ROOT or third_party/tensorrt),
#      then its exports (getCreators, setLoggerFinder, no libnvinfer dependency) and a host-side run of the
#      creator and plugin interfaces (tests/plugins/plugin_host_check.cpp). The build goes to plugins/build
#      (gitignored), where tests/trt/test_plugin_build.py opens the library instead of compiling it again;
#   3. the plugin source against every other header set in third_party/tensorrt-*/include (e.g. 10.x).
# Fails on any compile error and on a missing CUDA toolkit (unless DYCONV_CI_ALLOW_NO_CUDA=1, which it
# prints); prints what it compiled and, without TensorRT headers, that the plugin was not compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${CUDACXX:-$CUDA_HOME/bin/nvcc}"
if [ ! -x "$NVCC" ] || [ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]; then
  echo "ci_compile: no CUDA toolkit at CUDA_HOME=$CUDA_HOME (nvcc: $NVCC); native code NOT compiled" >&2
  if [ "${DYCONV_CI_ALLOW_NO_CUDA:-0}" = 1 ]; then
    echo "ci_compile: DYCONV_CI_ALLOW_NO_CUDA=1 is set: passing without the native compile checks" >&2
    exit 0
  fi
  echo "ci_compile: failing (install the CUDA toolkit or set CUDA_HOME; DYCONV_CI_ALLOW_NO_CUDA=1 opts out)" >&2
  exit 1
fi
CUDA_INCLUDE="$CUDA_HOME/include"
CMAKE_BUILD=plugins/build
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

# tensorrt_version DIR: "11.1.0" from DIR/NvInferVersion.h.
tensorrt_version() {
  awk '/#define TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE / {v = v (v ? "." : "") $3} END {print v}' "$1/NvInferVersion.h"
}

HEADERS=""
for candidate in "${TENSORRT_ROOT:-}/include" third_party/tensorrt/include; do
  if [ -f "$candidate/NvInferRuntime.h" ]; then HEADERS="$(cd "$candidate" && pwd)"; break; fi
done

PLUGIN=OFF
[ -n "$HEADERS" ] && PLUGIN=ON
echo "ci_compile: nvcc $("$NVCC" --version | tail -1); TensorRT headers: ${HEADERS:-none}"
if [ "$PLUGIN" = OFF ]; then
  echo "ci_compile: TensorRT plugin NOT compiled: no package registry reachable from CI has the TensorRT headers;" \
    "extract include/ of github.com/NVIDIA/TensorRT into third_party/tensorrt (or set TENSORRT_ROOT) to compile it"
fi
CUBLAS=AUTO
[ "${DYCONV_CI_REQUIRE_CUBLAS:-0}" = 1 ] && CUBLAS=ON
cmake -S plugins -B "$CMAKE_BUILD" -U "DYCONV_CUBLAS_*" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="80;90" \
  -DDYCONV_BUILD_TENSORRT_PLUGIN="$PLUGIN" ${HEADERS:+-DTENSORRT_INCLUDE_DIR="$HEADERS"} \
  -DDYCONV_WITH_CUBLAS="$CUBLAS" -DCUBLAS_ROOT="${CUBLAS_ROOT:-}" >"$SCRATCH/configure.log" \
  || { cat "$SCRATCH/configure.log"; exit 1; }
grep -- '-- dyconv: cuBLAS' "$SCRATCH/configure.log" | sed 's/^-- dyconv: /ci_compile: /'
cmake --build "$CMAKE_BUILD" -j"$(nproc)"
echo "ci_compile: compiled plugins/kernels/dynamic_conv.cu for sm_80 and sm_90 (tensor-core-*: WMMA TF32/half)"
"$NVCC" -std=c++17 -O1 -gencode arch=compute_75,code=sm_75 -c plugins/kernels/dynamic_conv.cu -o "$SCRATCH/sm75.o"
echo "ci_compile: compiled plugins/kernels/dynamic_conv.cu for sm_75 (the WMMA kernel left empty, refused at run time)"

# The torch binding, syntax only, against the headers of the python's torch (linking it needs a CUDA build of torch,
# which builds it on a GPU machine): a CPU torch ships c10/cuda but not the generated cuda_cmake_macros.h, which a
# stub after the real include paths stands in for.
PYTHON="${PYTHON:-python}"
if TORCH_INCLUDES="$("$PYTHON" -c 'import torch.utils.cpp_extension as e; print(" ".join(e.include_paths()))' \
  2>/dev/null)"; then
  mkdir -p "$SCRATCH/stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$SCRATCH/stub/c10/cuda/impl/cuda_cmake_macros.h"
  PY_INCLUDE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  # shellcheck disable=SC2046  # one include flag per path
  g++ -std=c++20 -fsyntax-only $(printf -- '-isystem %s ' $TORCH_INCLUDES) -idirafter "$SCRATCH/stub" \
    -isystem "$PY_INCLUDE" -isystem "$CUDA_INCLUDE" -Iplugins/kernels -DTORCH_EXTENSION_NAME=dyconv_cuda \
    plugins/torch/dyconv_torch.cpp
  echo "ci_compile: checked plugins/torch/dyconv_torch.cpp against torch $("$PYTHON" -c 'import torch; \
print(torch.__version__)') headers (syntax only)"
else
  echo "ci_compile: torch binding NOT checked: $PYTHON cannot import torch.utils.cpp_extension"
fi

if [ "$PLUGIN" = ON ]; then
  LIB="$CMAKE_BUILD/libdyconv_trt_plugin.so"
  EXPORTS="$(nm -D --defined-only "$LIB" | awk '{print $3}' | sort | tr '\n' ' ')"
  [ "$EXPORTS" = "getCreators setLoggerFinder " ] || { echo "ci_compile: unexpected exports: $EXPORTS" >&2; exit 1; }
  if readelf -d "$LIB" | grep -q 'libnvinfer'; then echo "ci_compile: plugin links libnvinfer" >&2; exit 1; fi
  echo "ci_compile: built $LIB against TensorRT $(tensorrt_version "$HEADERS") headers in $HEADERS" \
    "(exports: $EXPORTS; no libnvinfer)"
  g++ -std=c++17 -isystem "$HEADERS" -I"$CUDA_INCLUDE" tests/plugins/plugin_host_check.cpp -ldl -o "$SCRATCH/host_check"
  "$SCRATCH/host_check" "$LIB" 2>&1
fi

for extra in third_party/tensorrt-*/include; do
  [ -f "$extra/NvInferVersion.h" ] || continue
  g++ -std=c++17 -fPIC -Wall -Wextra -Werror -isystem "$extra" -I"$CUDA_INCLUDE" -Iplugins/kernels \
    -c plugins/tensorrt/dynamicConvPlugin.cpp -o "$SCRATCH/plugin_$(basename "$(dirname "$extra")").o"
  echo "ci_compile: compiled plugins/tensorrt/dynamicConvPlugin.cpp against TensorRT $(tensorrt_version "$extra") headers in $extra"
done
