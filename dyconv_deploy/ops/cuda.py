"""CUDA kernels for ``torch.ops.dyconv.dynamic_conv2d``, built on demand from ``plugins/``.

:func:`enable_cuda_kernels` compiles ``plugins/kernels/dynamic_conv.cu`` and
``plugins/torch/dyconv_torch.cpp`` with ``torch.utils.cpp_extension.load`` (once per machine;
torch caches the build under ``TORCH_EXTENSIONS_DIR``) and registers the result as the CUDA
kernel of the op, so every :mod:`dyconv_deploy.nn` layer on a GPU runs the fused kernels.
It needs a CUDA build of torch, a device and nvcc; without them it raises a one-line
:class:`~dyconv_deploy.errors.DyconvError`. The ``cublas-pointwise`` path is compiled in when
cuBLAS is found (:func:`cublas_root`: ``CUBLAS_ROOT``, the CUDA toolkit, or the nvidia-cublas
wheel a CUDA build of torch depends on). Backward still differentiates the reference math.
"""

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import torch
from torch import Tensor

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.native import plugins_dir
from dyconv_deploy.ops.contract import TORCH_OP

# Paths of plugins/kernels (dyconv::Algo values; "auto" is the per-shape heuristic).
ALGOS = ("auto", "depthwise", "gemm-fused", "gemm-aggregated", "cublas-pointwise", "tensor-core-fused")
EXTENSION_NAME = "dyconv_cuda"
_state: dict = {"extension": None, "registered": False}


def extension_sources() -> list[Path]:
    """The two translation units of the extension."""
    root = plugins_dir()
    return [root / "kernels" / "dynamic_conv.cu", root / "torch" / "dyconv_torch.cpp"]


def cublas_root(cuda_home: Optional[str] = None) -> Optional[Path]:
    """A tree with ``include/cublas_v2.h`` and ``lib/libcublas.so*``, or None.

    In order: ``$CUBLAS_ROOT``; the CUDA toolkit at ``cuda_home``; the nvidia-cublas wheel
    (``nvidia/cu13``, or ``nvidia/cublas`` of the CUDA 12 wheel).
    """
    candidates = [Path(os.environ["CUBLAS_ROOT"])] if os.environ.get("CUBLAS_ROOT") else []
    candidates += [Path(cuda_home)] if cuda_home else []
    if importlib.util.find_spec("nvidia") is not None:
        for name in ("nvidia.cu13", "nvidia.cublas"):
            spec = importlib.util.find_spec(name)
            candidates += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in candidates:
        libraries = sorted((root / "lib").glob("libcublas.so*")) + sorted((root / "lib64").glob("libcublas.so*"))
        if (root / "include" / "cublas_v2.h").is_file() and libraries:
            return root
    return None


def cublas_flags(root: Optional[Path]) -> dict:
    """Extra ``cpp_extension.load`` arguments that compile the cuBLAS path against ``root`` (none for None)."""
    if root is None:
        return {"extra_cuda_cflags": [], "extra_ldflags": []}
    library = next(p for folder in ("lib", "lib64") for p in sorted((root / folder).glob("libcublas.so*")))
    return {"extra_cuda_cflags": ["-DDYCONV_WITH_CUBLAS=1", f"-I{root / 'include'}"],
            "extra_ldflags": [f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]}


def load_extension(verbose: bool = False) -> ModuleType:
    """Build (first call on a machine) and import the extension; raises DyconvError without CUDA."""
    if _state["extension"] is None:
        if not torch.cuda.is_available():
            raise DyconvError(f"no CUDA device: the CUDA kernels need a CUDA build of torch and a GPU "
                              f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})")
        from torch.utils import cpp_extension

        if cpp_extension.CUDA_HOME is None:
            raise DyconvError("nvcc not found: set CUDA_HOME to the CUDA toolkit to build the CUDA kernels")
        sources = extension_sources()
        blas = cublas_flags(cublas_root(cpp_extension.CUDA_HOME))
        _state["extension"] = cpp_extension.load(
            name=EXTENSION_NAME, sources=[str(s) for s in sources], extra_include_paths=[str(sources[0].parent)],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3", *blas["extra_cuda_cflags"]],
            extra_ldflags=blas["extra_ldflags"], verbose=verbose)
    return _state["extension"]


def dynamic_conv2d_cuda(x: Tensor, attention: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                        spatial: Optional[Tensor] = None, stride: Sequence[int] = (1, 1),
                        padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1), groups: int = 1,
                        algo: str = "auto") -> Tensor:
    """The contract on CUDA tensors through ``plugins/kernels`` (operands are cast to ``x.dtype``).

    Args:
        x: ``[N, C, H, W]`` float32 or float16. attention: ``[N, K]`` or ``[N, K, M]``.
        weight: ``[K, M, C/groups, kH, kW]``. bias: ``[K, M]`` or None. spatial: ``[N, kH, kW]`` or None.
        padding: ``(top, left, bottom, right)``. algo: one of :data:`ALGOS` (``cublas-pointwise``: 1x1 /
        stride 1 / unpadded only, TF32 for float32; ``tensor-core-fused``: sm_80 or later, TF32 for float32;
        see :func:`available_algos`).
    Returns:
        ``[N, M, Ho, Wo]`` in ``x.dtype``.
    """
    if algo not in ALGOS:
        raise DyconvError(f"unknown kernel path {algo!r}; choose one of {', '.join(ALGOS)}")
    check_operands(x, attention, weight, bias, spatial, groups)

    def cast(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(x.dtype)

    return load_extension().dynamic_conv2d(x, cast(attention), cast(weight), cast(bias), cast(spatial),
                                           list(stride), list(padding), list(dilation), int(groups),
                                           ALGOS.index(algo))


def check_operands(x: Tensor, attention: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   spatial: Optional[Tensor] = None, groups: int = 1) -> None:
    """Raise a one-line DyconvError unless the operands have the contract's shapes (the kernels read them unchecked).

    ``x [N, C, H, W]``, ``weight [K, M, C/groups, kH, kW]``, ``attention [N, K]`` or ``[N, K, M]``,
    ``bias [K, M]``, ``spatial [N, kH, kW]``. The extension checks the same (``plugins/torch/dyconv_torch.cpp``).
    """
    if x.dim() != 4 or weight.dim() != 5:
        raise DyconvError(f"x must be [N, C, H, W] and weight [K, M, C/groups, kH, kW]; got x {list(x.shape)}, "
                          f"weight {list(weight.shape)}")
    n, c = x.shape[:2]
    k, m, cg, kh, kw = weight.shape
    if groups < 1 or cg * groups != c or m % groups != 0:
        raise DyconvError(f"weight {list(weight.shape)} with groups={groups} does not fit x {list(x.shape)}: "
                          f"need C = C/groups * groups ({cg} * {groups} != {c}) and M divisible by groups")
    expected = {"attention": ([n, k], [n, k, m]), "bias": ([k, m],), "spatial": ([n, kh, kw],)}
    for name, tensor in (("attention", attention), ("bias", bias), ("spatial", spatial)):
        if tensor is not None and list(tensor.shape) not in expected[name]:
            shapes = " or ".join(str(s) for s in expected[name])
            raise DyconvError(f"{name} has shape {list(tensor.shape)}, expected {shapes} for x {list(x.shape)} "
                              f"and weight {list(weight.shape)}")


def selected_algo(x: Tensor, attention: Tensor, weight: Tensor, stride: Sequence[int] = (1, 1),
                  padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1), groups: int = 1) -> str:
    """The path the per-shape heuristic picks for these operands (see plugins/kernels/dynamic_conv.h)."""
    check_operands(x, attention, weight, groups=groups)
    return load_extension().select_algo(x, attention.to(x.dtype), weight.to(x.dtype), list(stride), list(padding),
                                        list(dilation), int(groups))


def available_algos() -> list[str]:
    """The paths of :data:`ALGOS` compiled into the extension that the current GPU runs (``cublas-pointwise``
    needs cuBLAS at build time, ``tensor-core-fused`` an sm_80 or later GPU)."""
    return list(load_extension().available_algos())


def _cuda_kernel(x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    return dynamic_conv2d_cuda(x, attention, weight, bias, spatial, stride, padding, dilation, groups)


def enable_cuda_kernels(verbose: bool = False) -> ModuleType:
    """Build/load the extension and register it as the CUDA kernel of ``dyconv::dynamic_conv2d`` (idempotent)."""
    extension = load_extension(verbose)
    if not _state["registered"]:
        torch.library.register_kernel(TORCH_OP, "cuda", _cuda_kernel)
        _state["registered"] = True
    return extension
