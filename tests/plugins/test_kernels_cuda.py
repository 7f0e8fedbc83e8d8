"""``plugins/kernels`` on a CUDA device (through the torch extension) against the reference.

Every kernel config (``KERNEL_CONFIGS``) x kernel path x fp32/fp16 x batch 1/7/64, the torch op
dispatching to the kernels once enabled, and a compute-sanitizer memcheck run. Skips without a CUDA device.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyconv_deploy.ops import dynamic_conv2d, per_sample_dynamic_conv2d
from dyconv_deploy.tolerance import TOLERANCES, compare
from layer_configs import KERNEL_CONFIGS, LAYER_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
KERNEL_TOLERANCES = {"fp32": TOLERANCES["fp32"], "fp16": TOLERANCES["fp16-kernel"]}  # fp16: fp32 accumulation
BATCHES = (1, 7, 64)


@pytest.fixture(scope="module")
def cuda_ops():
    from dyconv_deploy.ops import cuda

    cuda.enable_cuda_kernels()
    return cuda


WMMA_PATHS = ("tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts")


def paths_for(config) -> list[str]:
    """Every path that applies; ``cublas-pointwise`` also needs a build with cuBLAS, the ``tensor-core-*`` paths an
    sm_80+ GPU (skipped otherwise)."""
    return (["auto", "gemm-fused", "gemm-aggregated", *WMMA_PATHS]
            + (["depthwise"] if config.depthwise else []) + (["cublas-pointwise"] if config.pointwise else []))


def tolerance_for(algo: str, precision: str):
    """Tensor cores (TF32 for fp32, fp16 per-sample kernels): ``tensor-core-kernel``; the rest fp32 accuracy."""
    tensor_cores = algo in ("cublas-pointwise", *WMMA_PATHS)
    return TOLERANCES["tensor-core-kernel"] if tensor_cores else KERNEL_TOLERANCES[precision]


CASES = [pytest.param(config, algo, id=f"{config.name}-{algo}") for config in KERNEL_CONFIGS
         for algo in paths_for(config)]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("config, algo", CASES)
def test_cuda_kernels_match_reference(cuda_ops, config, algo, precision, batch):
    if algo not in ["auto", *cuda_ops.available_algos()]:
        pytest.skip(f"{algo} is not available: not compiled into this build (no cuBLAS found) or, for "
                    "tensor-core-*, a GPU below sm_80")
    inputs = config.inputs(batch, torch.Generator().manual_seed(batch))
    dtype = DTYPES[precision]
    device = {k: None if v is None else v.to("cuda", dtype) for k, v in inputs.items()}
    y = cuda_ops.dynamic_conv2d_cuda(**device, **config.conv_kwargs(), algo=algo)
    expected = per_sample_dynamic_conv2d(**{k: None if v is None else v.double() for k, v in device.items()},
                                         **config.conv_kwargs())
    assert y.dtype == dtype
    result = compare(y, expected, tolerance_for(algo, precision))
    assert result.passed, str(result)


@pytest.mark.gpu
@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=lambda c: c.name)
def test_torch_op_dispatches_to_the_kernels(cuda_ops, config):
    inputs = {k: None if v is None else v.cuda()
              for k, v in config.inputs(3, torch.Generator().manual_seed(0)).items()}
    through_op = dynamic_conv2d(**inputs, **config.conv_kwargs())
    algo = cuda_ops.chosen_algo(inputs["x"], inputs["attention"], inputs["weight"], **config.conv_kwargs())
    assert algo in ("auto", *cuda_ops.available_algos())  # the cost model's pick (auto: the heuristic's)
    direct = cuda_ops.dynamic_conv2d_cuda(**inputs, **config.conv_kwargs(), algo=algo)
    assert torch.equal(through_op, direct)


@pytest.mark.gpu
def test_heuristic_choice_is_reported(cuda_ops):
    config = LAYER_CONFIGS[0]
    inputs = config.inputs(1, torch.Generator().manual_seed(0))
    algo = cuda_ops.selected_algo(inputs["x"].cuda(), inputs["attention"].cuda(), inputs["weight"].cuda(),
                                  **config.conv_kwargs())
    assert algo == "gemm-fused"


@pytest.mark.gpu
def test_no_illegal_memory_access_under_compute_sanitizer(cuda_ops, tmp_path):
    sanitizer = shutil.which("compute-sanitizer") or shutil.which(str(Path(_cuda_home()) / "bin" / "compute-sanitizer"))
    if sanitizer is None:
        pytest.skip("compute-sanitizer not found (CUDA_HOME/bin or PATH)")
    run = subprocess.run([sanitizer, "--tool", "memcheck", "--error-exitcode", "3", sys.executable,
                          str(HERE / "sanitizer_workload.py")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in run.stdout + run.stderr


def _cuda_home() -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME or "/usr/local/cuda"
