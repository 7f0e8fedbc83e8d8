"""CUDA kernels for ``torch.ops.dyconv.dynamic_conv2d``, built on demand from ``plugins/``.

:func:`enable_cuda_kernels` compiles ``plugins/kernels/dynamic_conv.cu`` and
``plugins/torch/dyconv_torch.cpp`` with ``torch.utils.cpp_extension.load`` (once per machine;
torch caches the build under ``TORCH_EXTENSIONS_DIR``) and registers the result as the CUDA
kernel of the op, so every :mod:`dyconv_deploy.nn` layer on a GPU runs the fused kernels.
It needs a CUDA build of torch, a device and nvcc; without them it raises a one-line
:class:`~dyconv_deploy.errors.DyconvError`. The registered kernel runs, per layer shape, the path
that :mod:`~dyconv_deploy.ops.cuda_cost`'s model, calibrated once on the GPU, predicts fastest
(:func:`chosen_algo`). The ``cublas-pointwise`` path is compiled in when
cuBLAS is found (:func:`cublas_root`: ``CUBLAS_ROOT``, the CUDA toolkit, or the nvidia-cublas
wheel a CUDA build of torch depends on). Backward still differentiates the reference math.
"""

import hashlib
import importlib.util
import logging
import os
import statistics
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import torch
from torch import Tensor

from dyconv_deploy.cache import default_cache_dir
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.native import plugins_dir
from dyconv_deploy.ops.contract import TORCH_OP, output_size
from dyconv_deploy.ops.cuda_cost import COST_MODEL_ENV, FORCE_ENV, PATHS, CostModel, LayerShape, calibrate, choose

# Paths of plugins/kernels, in dyconv::Algo order ("auto" is the kernels' per-shape heuristic).
ALGOS = ("auto", *PATHS)
EXTENSION_NAME = "dyconv_cuda"
_state: dict = {"extension": None, "registered": False, "cost_models": {}, "choices": {}}
logger = logging.getLogger(__name__)


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
        stride 1 / unpadded only, TF32 for float32; ``tensor-core-fused``, ``-aggregated``, ``-experts``:
        sm_80 or later, TF32 for float32, ``-experts`` at most 64 experts; see :func:`available_algos`).
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
    needs cuBLAS at build time, the ``tensor-core-*`` paths an sm_80 or later GPU)."""
    return list(load_extension().available_algos())


def layer_shape(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int) -> LayerShape:
    """The :class:`~dyconv_deploy.ops.cuda_cost.LayerShape` of one call (operands as for
    :func:`dynamic_conv2d_cuda`)."""
    n, c, h, w = (int(d) for d in x.shape)
    k, m, _, kh, kw = (int(d) for d in weight.shape)
    ho = output_size(h, padding[0], padding[2], kh, stride[0], dilation[0])
    wo = output_size(w, padding[1], padding[3], kw, stride[1], dilation[1])
    pointwise = kh == kw == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0, 0, 0)
    return LayerShape(n, c, h, w, m, int(groups), kh, kw, ho, wo, k, x.element_size(), pointwise)


def cost_model(recalibrate: bool = False) -> CostModel:
    """The current GPU's :class:`~dyconv_deploy.ops.cuda_cost.CostModel` for this build of the kernels:
    read from the cache (``<cache>/cuda-cost/``, keyed by the kernel sources, the paths this build runs on
    this GPU, the GPU's name, capability, multiprocessors and L2, and torch), else calibrated now (every
    available path timed on its probe layers, about a second) and cached."""
    device = torch.cuda.get_device_properties(torch.cuda.current_device())
    if "source_digest" not in _state:
        _state["source_digest"] = hashlib.sha256(b"".join(p.read_bytes() for p in extension_sources())).hexdigest()
    available = sorted(available_algos())
    l2_bytes = int(getattr(device, "L2_cache_size", 0))
    identity = [_state["source_digest"], *available, device.name, f"{device.major}.{device.minor}",
                str(device.multi_processor_count), str(l2_bytes), torch.__version__]
    path = default_cache_dir() / "cuda-cost" / f"{hashlib.sha256('|'.join(identity).encode()).hexdigest()[:20]}.json"
    key = str(path)
    if not recalibrate and key in _state["cost_models"]:
        return _state["cost_models"][key]
    model = None
    if not recalibrate and path.is_file():
        try:
            model = CostModel.from_json(path.read_text())
        except DyconvError as exc:
            logger.warning("ignoring the cached cost model %s (%s): calibrating again", path, exc)
    if model is None:
        logger.info("calibrating the CUDA kernels' cost model on %s (once per GPU and build; cached in %s)",
                    device.name, path.parent)
        model = calibrate(_time_path, available, device.name, l2_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as scratch:
            scratch.write(model.to_json())
        os.chmod(scratch.name, 0o644)
        os.replace(scratch.name, path)  # never a half-written model for a concurrent reader
    _state["cost_models"][key] = model
    return model


def median_call_ms(fn, iterations: int, repeats: int = 1, warmup: int = 3) -> float:
    """Per-call time of ``fn()`` on the current CUDA stream in ms: the median over ``repeats`` groups of
    ``iterations`` back-to-back calls (after ``warmup`` untimed ones), each group timed by two CUDA events and
    synchronised once."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iterations)
    return statistics.median(times)


def _time_path(shape: LayerShape, path: str, dtype: str) -> float:
    """Seconds per call of ``path`` on random operands of ``shape`` (:func:`median_call_ms`, 10 calls)."""
    kind = torch.float16 if dtype == "float16" else torch.float32
    generator = torch.Generator(device="cuda").manual_seed(0)
    def rand(*size):
        return torch.randn(*size, device="cuda", dtype=kind, generator=generator)

    x = rand(shape.n, shape.c, shape.h, shape.w)
    weight = rand(shape.experts, shape.m, shape.c // shape.groups, shape.kh, shape.kw)
    attention = torch.softmax(rand(shape.n, shape.experts).float(), 1).to(kind)
    padding = (0, 0, 0, 0) if shape.pointwise else (shape.kh // 2, shape.kw // 2, shape.kh // 2, shape.kw // 2)
    return median_call_ms(lambda: dynamic_conv2d_cuda(x, attention, weight, None, None, (1, 1), padding, (1, 1),
                                                      shape.groups, algo=path), 10) / 1e3


def chosen_algo(x: Tensor, attention: Tensor, weight: Tensor, stride: Sequence[int] = (1, 1),
                padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1), groups: int = 1) -> str:
    """The path ``auto`` runs for these operands: :func:`~dyconv_deploy.ops.cuda_cost.choose` with the
    :func:`cost_model` of ``x``'s GPU (overrides: ``$DYCONV_CUDA_ALGO``, ``$DYCONV_CUDA_COST_MODEL=0``); cached
    per shape and device. While a CUDA graph is being captured, a shape not seen before gets the kernels' own
    heuristic, uncached (calibrating would synchronise the capturing stream); warm-up runs decide the rest."""
    shape = layer_shape(x, weight, stride, padding, dilation, groups)
    dtype = "float16" if x.dtype == torch.float16 else "float32"
    allow_tf32 = torch.backends.cudnn.allow_tf32
    key = (shape, dtype, x.device.index, allow_tf32, os.environ.get(FORCE_ENV), os.environ.get(COST_MODEL_ENV))
    if key not in _state["choices"]:
        with torch.cuda.device(x.device):
            capturing = torch.cuda.is_current_stream_capturing()
            use_model = os.environ.get(COST_MODEL_ENV, "1") != "0" and not capturing
            choice = choose(cost_model() if use_model else None, shape, dtype, available_algos(), allow_tf32)
        if capturing:
            return choice  # not cached: after the capture the model decides
        _state["choices"][key] = choice
    return _state["choices"][key]


def _cuda_kernel(x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    algo = chosen_algo(x, attention, weight, stride, padding, dilation, groups)
    return dynamic_conv2d_cuda(x, attention, weight, bias, spatial, stride, padding, dilation, groups, algo=algo)


def enable_cuda_kernels(verbose: bool = False) -> ModuleType:
    """Build/load the extension and register it as the CUDA kernel of ``dyconv::dynamic_conv2d`` (idempotent)."""
    extension = load_extension(verbose)
    if not _state["registered"]:
        torch.library.register_kernel(TORCH_OP, "cuda", _cuda_kernel)
        _state["registered"] = True
    return extension
