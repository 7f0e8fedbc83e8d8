#!/usr/bin/env bash
# The prepared device check of the GPU kernels (issue 14), on one CUDA GPU, everything under one folder:
#   install    the project with --no-deps --no-build-isolation (the device image has torch; nothing can be fetched);
#   build      the torch extension (plugins/kernels + plugins/torch) for this GPU's architecture only;
#   tests      tests/plugins on CUDA (the CPU-only emulated and OpenVINO tests and the full sanitizer run left out);
#   costmodel  calibrate the kernels' cost model on this GPU (dyconv_deploy/ops/cuda_cost.py) into OUT/cost_model.json;
#   network    the whole-network table of benchmarks/network_bench.py: DY-MobileNetV2 and DY-ResNet-18 on the
#              extension's kernels and on the op's default CUDA implementation, each against its static twin
#              (fp16 first, the goal's precision, then tf32 and fp32; batch 1, 32, 256; exit 1 if the kernels'
#              output mismatches the default one's);
#   bench      the per-layer table of benchmarks/kernel_bench.py (fp16, tf32, fp32; batch 1, 32, 256): every kernel
#              path, "ours" being the path the cost model picks for each layer and batch;
#   sanitizer  compute-sanitizer memcheck, racecheck, synccheck and initcheck on a small subset of the configs.
# The headline tables come before the sanitizer, so a run cut short still has them. Each step writes
# OUT/<step>.log and appends "<step>: ok|FAILED ..." to OUT/summary.txt as soon as it ends, so an interrupted run
# keeps what it measured; a failed step does not stop the later ones, except a failed build. With
# GPU_CHECK_ARCHIVE=FILE, OUT is also packed into FILE (a .tar.gz) after every step: one file to bring back from a
# machine that returns only a few. Exit status: 0 all ok, 1 a step failed, 2 no CUDA device (checked first, before
# anything is installed).
#
#   bash benchmarks/gpu_check.sh [OUT]          # OUT defaults to benchmarks/results/gpu_check
#   GPU_CHECK_STEPS="build bench" bash benchmarks/gpu_check.sh "$OUT"   # a rerun of some steps
#   GPU_CHECK_STEPS="build network" bash benchmarks/gpu_check.sh "$OUT" # the whole-network table again
#   GPU_CHECK_ARCHIVE="$OUT/gpu_check.tar.gz" bash benchmarks/gpu_check.sh /tmp/gpu_check  # the device tool's $OUT
# Where one command may run 10 minutes, split it: "install build tests costmodel network", then
# "build bench sanitizer" (the second build finds the extension in TORCH_EXTENSIONS_DIR).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${1:-benchmarks/results/gpu_check}"
STEPS="${GPU_CHECK_STEPS:-install build tests costmodel network bench sanitizer}"
PYTHON="${PYTHON:-python}"
# A few configs that cover every path, two output-channel tiles, a two-block depthwise plane and split-K.
SANITIZER_CONFIGS="pointwise-m-two-tiles 3x3-deep-dynet depthwise-3x3-289-pixels"
for step in $STEPS; do
  case "$step" in
    install | build | tests | costmodel | network | bench | sanitizer) ;;
    *) echo "gpu_check: unknown step '$step' in GPU_CHECK_STEPS (steps: install build tests costmodel network bench" \
        "sanitizer)" >&2
      exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  versions="$("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")' 2>&1 \
    | tail -1)"
  echo "gpu_check: no CUDA device visible to torch ($versions); this check needs a GPU" | tee "$SUMMARY" >&2
  exit 2
fi
: >"$SUMMARY"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")'
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1 | tail -1; } >"$OUT_DIR/environment.txt"

# The steps import the checkout even if the install step fails; the extension builds once, outside OUT.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DYCONV_PLUGINS_DIR="$PWD/plugins"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/dyconv_torch_extensions}"
TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
export TORCH_CUDA_ARCH_LIST
FAILED=0

# run_step NAME LIMIT_S COMMAND...: COMMAND under a time limit, its output in OUT/NAME.log, its line in the summary.
run_step() {
  local name="$1" limit="$2" start=$SECONDS rc
  shift 2
  echo "gpu_check: $name (at most $limit s)"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "$name: ok in $((SECONDS - start)) s" | tee -a "$SUMMARY"
  else
    echo "$name: FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out')) in $((SECONDS - start)) s, see $name.log" \
      | tee -a "$SUMMARY"
    tail -5 "$OUT_DIR/$name.log"
    FAILED=1
  fi
  if [ -n "${GPU_CHECK_ARCHIVE:-}" ]; then
    tar -czf "$GPU_CHECK_ARCHIVE.tmp" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" \
      && mv "$GPU_CHECK_ARCHIVE.tmp" "$GPU_CHECK_ARCHIVE"
  fi
  return "$rc"
}

sanitizer() {
  local tool sanitizer_bin
  sanitizer_bin="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
  for tool in memcheck racecheck synccheck initcheck; do
    # shellcheck disable=SC2086  # the config names are words
    run_step "sanitizer_$tool" 150 "$sanitizer_bin" --tool "$tool" --error-exitcode 3 \
      "$PYTHON" tests/plugins/sanitizer_workload.py $SANITIZER_CONFIGS
  done
}

for step in $STEPS; do
  case "$step" in
    install) run_step install 180 "$PYTHON" -m pip install --no-deps --no-build-isolation -e . ;;
    build)
      run_step build 420 "$PYTHON" -c 'from dyconv_deploy.ops import cuda; cuda.enable_cuda_kernels(verbose=True)' \
        || { echo "gpu_check: the extension did not build; stopping" >&2; exit 1; } ;;
    tests)
      run_step tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider tests/plugins \
        --ignore=tests/plugins/test_kernels_emulated.py --ignore=tests/plugins/test_openvino_extension_build.py \
        -k "not compute_sanitizer" --junitxml="$OUT_DIR/tests_plugins.xml" ;;
    sanitizer) sanitizer ;;
    costmodel)
      run_step costmodel 120 "$PYTHON" -c 'import sys; from dyconv_deploy.ops import cuda; cuda.enable_cuda_kernels()
open(sys.argv[1], "w").write(cuda.cost_model(recalibrate=True).to_json())' "$OUT_DIR/cost_model.json" ;;
    network) run_step network 240 "$PYTHON" benchmarks/network_bench.py --out "$OUT_DIR" --precisions fp16 tf32 fp32 ;;
    bench)
      run_step bench 420 "$PYTHON" benchmarks/kernel_bench.py --out "$OUT_DIR" --iters 10 --repeats 3 \
        --precisions fp16 tf32 fp32 ;;
  esac
done
echo "gpu_check: done, results in $OUT_DIR (summary.txt)"
exit "$FAILED"
