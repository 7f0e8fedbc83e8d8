"""Which CUDA kernel path runs a dynamic conv: a cost model of each path, calibrated on the device.

For every path of ``plugins/kernels`` (:data:`~dyconv_deploy.ops.cuda.ALGOS` but ``auto``),
:func:`path_work` counts what one call costs — FLOPs, bytes that cross DRAM, kernel launches — from
the layer's shape alone, and :class:`PathRates` turns work into time,
``launches * launch_s + flops * s_per_flop + dram_bytes * s_per_byte``, with the three costs of
each path fitted (non-negative least squares on relative errors) to its timings on the probe layers
it applies to (:func:`calibrate`: once per device and extension build, cached on disk).
:func:`choose` then takes the path of least predicted time among those that apply and are available:

* ``depthwise``: C/G == 1; conv FLOPs + mixing the taps once per 256-pixel block; reads X, the
  experts, writes Y.
* ``gemm-fused``: experts mixed while each block loads a weight tile, so every 64-pixel tile of every
  sample mixes its tile again (``K`` multiply-adds per weight per tile) and reads the experts again
  (from L2 while those of the blocks running at once, one row tile's per group, fit in half of it,
  else from DRAM); no workspace.
* ``gemm-aggregated`` / ``cublas-pointwise``: one launch writes the per-sample kernels
  (``N * M * C/G * kH * kW``, fp32 / the input type), reading the experts once per sample (from L2
  while they fit in half of it), the GEMM reads them back; ``cublas-pointwise`` only for an unpadded
  stride-1 1x1 conv, on tensor cores.
* ``tensor-core-fused`` / ``tensor-core-aggregated``: the fused / aggregated work (``-aggregated``'s
  kernels in the input type) on tensor cores (sm_80+), whose FLOPs are the MMAs' padded ones: every
  64 x 64 block multiplies whole 32-deep reduction tiles, padding included (a depthwise conv's one
  channel per group fills one of its 64 rows); ``-fused`` blocks are 128 pixels wide on planes over
  64 pixels, so each sample's weights are mixed ``ceil(Ho*Wo / 128)`` times.
* ``tensor-core-experts``: one WMMA GEMM of the unmixed experts, ``K`` rows per output channel
  (``floor(64 / K)`` channels per 64-row tile), so ``K`` times the conv's padded FLOPs, plus
  ``K`` multiply-adds per output in the epilogue; its 64-column tiles run over the whole batch's
  pixels (``ceil(N*Ho*Wo / 64)`` per group: 7x7 planes fill whole tiles); reads X, the experts (again
  per column tile once one row tile's per group outgrows half of L2), writes Y; no per-sample kernels, no
  workspace.

Not counted (the fitted costs absorb them on average): the SIMT GEMM's 32x32-tile and split-K plans
for grids too small to fill the GPU (more re-mixing, a second launch and the partial sums' traffic),
and the bias (an extra launch and a read of Y for ``cublas-pointwise``).

Tensor-core paths round fp32 inputs to TF32, so for float32 they are candidates only while
``torch.backends.cudnn.allow_tf32`` is set, the same switch that lets cuDNN's static conv use TF32
(PyTorch's default): the dynamic conv then trades accuracy exactly as the static twin does.

:func:`path_bounds` turns the same work, split into tensor-core and SIMT FLOPs, into the least time a path
could take at a GPU's datasheet peaks (:data:`ROOFLINE_GPUS`), as a multiple of the static conv's
(``benchmarks/roofline.py``, and beside the measured times in ``benchmarks/kernel_bench.py``).

Overrides, for tests and for measuring one path: ``DYCONV_CUDA_ALGO=<path>`` forces that path
wherever it applies; ``DYCONV_CUDA_COST_MODEL=0`` keeps the kernels' own batch-independent heuristic
(``select_algo`` in ``plugins/kernels/dynamic_conv.h``).
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from dyconv_deploy.errors import DyconvError

PATHS = ("depthwise", "gemm-fused", "gemm-aggregated", "cublas-pointwise", "tensor-core-fused",
         "tensor-core-aggregated", "tensor-core-experts")
TENSOR_CORE_PATHS = ("cublas-pointwise", "tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts")
FORCE_ENV = "DYCONV_CUDA_ALGO"
COST_MODEL_ENV = "DYCONV_CUDA_COST_MODEL"
PIXEL_TILE = 64  # output pixels of one implicit-GEMM block (kMmaTile; the SIMT GEMM's 64x64 plan)
WIDE_PIXEL_TILE = 128  # tensor-core-fused's blocks on planes over PIXEL_TILE pixels (kMmaWideColumns)
ROW_TILE = 64  # weight rows of one WMMA block (kMmaTile)
REDUCTION_TILE = 32  # reduction depth of one WMMA block tile (kMmaBK)


@dataclass(frozen=True)
class LayerShape:
    """One call's sizes: ``X [n, c, h, w]``, ``W [experts, m, c/groups, kh, kw]``, ``Y [n, m, ho, wo]``;
    ``element_bytes`` 4 (float32) or 2 (float16)."""

    n: int
    c: int
    h: int
    w: int
    m: int
    groups: int
    kh: int
    kw: int
    ho: int
    wo: int
    experts: int
    element_bytes: int = 4
    pointwise: bool = False  # 1x1, stride 1, unpadded: the conv is a GEMM over X itself

    @property
    def kernel_elements(self) -> int:
        """Elements of one sample's kernels, ``M * C/G * kH * kW``."""
        return self.m * (self.c // self.groups) * self.kh * self.kw


@dataclass(frozen=True)
class Work:
    """What one call of a path costs: FLOPs, bytes across DRAM, kernel launches; ``tensor_flops``: those of
    ``flops`` that run on tensor cores (the MMAs, padding included; the rest, mixing and epilogues, on the
    SIMT units). The fitted rates use ``flops`` alone; the split is for bounds (``benchmarks/roofline.py``)."""

    flops: float
    dram_bytes: float
    launches: int
    tensor_flops: float = 0.0


def path_applies(shape: LayerShape, path: str) -> bool:
    """Whether ``path`` computes this shape (``depthwise``: C/G == 1; ``cublas-pointwise``: pointwise;
    ``tensor-core-experts``: at most 64 experts)."""
    if path == "depthwise":
        return shape.c // shape.groups == 1
    if path == "cublas-pointwise":
        return shape.pointwise
    if path == "tensor-core-experts":
        return shape.experts <= ROW_TILE
    return path in PATHS


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def mma_flops(shape: LayerShape, channels_per_tile: int, batch_columns: bool = False,
              column_tile: int = PIXEL_TILE) -> float:
    """FLOPs the WMMA blocks multiply, padding included: per group, ``ceil(M/G / channels_per_tile)`` blocks of
    64 rows by whole 32-deep reduction tiles by whole ``column_tile``-column tiles, the columns being each
    sample's pixels (``ceil(Ho*Wo / column_tile)`` tiles per sample) or, with ``batch_columns``
    (tensor-core-experts, whose weights are the same for every sample), the whole batch's
    (``ceil(N*Ho*Wo / 64)`` tiles)."""
    s = shape
    reduction = _ceil((s.c // s.groups) * s.kh * s.kw, REDUCTION_TILE) * REDUCTION_TILE
    rows = _ceil(s.m // s.groups, channels_per_tile) * ROW_TILE
    columns = _column_tiles(s, batch_columns, column_tile) * column_tile
    return 2.0 * s.groups * rows * reduction * columns


def _column_tiles(shape: LayerShape, batch_columns: bool, column_tile: int = PIXEL_TILE) -> int:
    """Column tiles of one group's GEMM: per sample, or over the whole batch's pixels."""
    s = shape
    return _ceil(s.n * s.ho * s.wo, column_tile) if batch_columns else s.n * _ceil(s.ho * s.wo, column_tile)


def fused_column_tile(shape: LayerShape) -> int:
    """Columns of a tensor-core-fused block: :data:`WIDE_PIXEL_TILE` on planes over :data:`PIXEL_TILE` pixels,
    else :data:`PIXEL_TILE` (``tensor_core_columns`` in the kernels)."""
    return WIDE_PIXEL_TILE if shape.ho * shape.wo > PIXEL_TILE else PIXEL_TILE


def _resident_experts_fit(shape: LayerShape, channels_per_tile: int, l2_bytes: int) -> bool:
    """Whether the experts that the blocks running at once read fit in half of L2. Blocks run in grid order, the
    column tiles (x) fastest, so those are one row tile's ``channels_per_tile`` channels per group: all the
    experts where M/G fits in one tile, else that share of them."""
    s = shape
    share = min(1.0, channels_per_tile / (s.m // s.groups))
    return 2 * s.experts * s.kernel_elements * s.element_bytes * share <= l2_bytes


def path_work(shape: LayerShape, path: str, l2_bytes: int) -> Work:
    """The :class:`Work` of one call of ``path`` on ``shape`` (see the module doc); ``l2_bytes``: the GPU's L2."""
    s, e = shape, shape.element_bytes
    conv_flops = 2.0 * s.n * s.kernel_elements * s.ho * s.wo
    mix_once = 2.0 * s.n * s.experts * s.kernel_elements  # every sample's kernels mixed once
    experts = float(s.experts * s.kernel_elements * e)
    activations = float(s.n * s.c * s.h * s.w * e + s.n * s.m * s.ho * s.wo * e)
    if path == "depthwise":
        return Work(conv_flops + mix_once, activations + experts, 1)
    if path in ("gemm-fused", "tensor-core-fused"):  # every pixel tile mixes its weight tiles again
        on_tensor_cores = path == "tensor-core-fused"
        width = fused_column_tile(s) if on_tensor_cores else PIXEL_TILE
        tiles = _ceil(s.ho * s.wo, width)  # per sample
        reread = experts * (1 if _resident_experts_fit(s, ROW_TILE, l2_bytes) else s.n * tiles)
        flops = mma_flops(s, ROW_TILE, column_tile=width) if on_tensor_cores else conv_flops
        return Work(flops + mix_once * tiles, activations + reread, 1, flops if on_tensor_cores else 0.0)
    if path == "tensor-core-experts":  # every 64-column tile of the batch reads its rows' experts
        epilogue = 2.0 * s.n * s.m * s.ho * s.wo * s.experts
        reread = experts * (1 if _resident_experts_fit(s, ROW_TILE // s.experts, l2_bytes)
                            else _column_tiles(s, batch_columns=True))
        mma = mma_flops(s, ROW_TILE // s.experts, batch_columns=True)
        return Work(mma + epilogue, activations + reread, 1, mma)
    if path in ("gemm-aggregated", "cublas-pointwise", "tensor-core-aggregated"):
        kernel_bytes = s.n * s.kernel_elements * (4 if path == "gemm-aggregated" else e)
        reread = experts * (1 if 2 * experts <= l2_bytes else s.n)  # the aggregation reads them per sample
        flops = mma_flops(s, ROW_TILE) if path == "tensor-core-aggregated" else conv_flops
        on_tensor_cores = path != "gemm-aggregated"
        return Work(flops + mix_once, activations + reread + 2.0 * kernel_bytes, 2, flops if on_tensor_cores else 0.0)
    raise DyconvError(f"no cost model for kernel path {path!r}; paths: {', '.join(PATHS)}")


@dataclass(frozen=True)
class PathRates:
    """Fitted costs of one path, each >= 0: seconds per launch, per FLOP and per DRAM byte."""

    launch_s: float
    s_per_flop: float
    s_per_byte: float

    def seconds(self, work: Work) -> float:
        return work.launches * self.launch_s + work.flops * self.s_per_flop + work.dram_bytes * self.s_per_byte


@dataclass
class CostModel:
    """Per-path, per-dtype rates of one device (``rates[dtype][path]``, dtype ``float32``/``float16``)."""

    device: str
    l2_bytes: int
    rates: dict[str, dict[str, PathRates]] = field(default_factory=dict)

    def predict(self, shape: LayerShape, path: str, dtype: str) -> float:
        """Predicted seconds of one call (raises DyconvError for a path with no rates for ``dtype``)."""
        if path not in self.rates.get(dtype, {}):
            raise DyconvError(f"the cost model of {self.device} has no rates for {path} in {dtype}")
        return self.rates[dtype][path].seconds(path_work(shape, path, self.l2_bytes))

    def to_json(self) -> str:
        return json.dumps({"device": self.device, "l2_bytes": self.l2_bytes,
                           "rates": {d: {p: asdict(r) for p, r in paths.items()} for d, paths in self.rates.items()}},
                          indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "CostModel":
        """The model :meth:`to_json` wrote; raises DyconvError for anything else."""
        try:
            data = json.loads(text)
            rates = {d: {p: PathRates(**{k: float(v) for k, v in r.items()}) for p, r in paths.items()}
                     for d, paths in data["rates"].items()}
            model = cls(str(data["device"]), int(data["l2_bytes"]), rates)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DyconvError(f"not a dyconv cost model: {exc}") from exc
        unknown = sorted({p for paths in rates.values() for p in paths} - set(PATHS))
        if unknown or not all(math.isfinite(v) and v >= 0 for paths in rates.values() for r in paths.values()
                              for v in asdict(r).values()):
            raise DyconvError(f"not a dyconv cost model: unknown paths {unknown} or costs that are not finite "
                              "and >= 0")
        return model


def fit_rates(works: Iterable[Work], seconds: Iterable[float]) -> PathRates:
    """Costs for which ``PathRates.seconds`` best fits measured ``seconds``: least squares on the relative
    errors (so large probes do not outweigh small ones) over the three non-negative coefficients; a
    coefficient that would be negative is dropped and the rest refitted. Needs at least three timings."""
    works, seconds = list(works), np.asarray(list(seconds), np.float64)
    if len(works) < 3 or len(works) != len(seconds) or not np.all(seconds > 0):
        raise DyconvError(f"fitting a path's rates needs >= 3 positive timings, got {list(seconds)}")
    design = np.array([[w.launches, w.flops, w.dram_bytes] for w in works], np.float64) / seconds[:, None]
    scale = design.max(axis=0)
    scale[scale == 0] = 1.0
    active = [0, 1, 2]
    while True:
        solution, *_ = np.linalg.lstsq(design[:, active] / scale[active], np.ones(len(works)), rcond=None)
        if np.all(solution >= 0) or len(active) == 1:
            break
        active.pop(int(np.argmin(solution)))
    coefficients = np.zeros(3)
    coefficients[active] = np.maximum(solution, 0) / scale[active]
    return PathRates(*(float(c) for c in coefficients))


# Layers the calibration times, chosen to separate the three rates: launch-bound, FLOP-bound and
# byte-bound shapes (n, c, h, m, groups, k), 1x1 ones unpadded, the others padded by k // 2.
PROBES = (
    (1, 16, 8, 16, 1, 1), (64, 256, 28, 256, 1, 1), (1, 960, 7, 320, 1, 1), (32, 128, 28, 128, 1, 3),
    (1, 512, 7, 512, 1, 3), (256, 64, 14, 64, 1, 1),
    (1, 32, 8, 32, 32, 3), (64, 192, 56, 192, 192, 3), (8, 960, 7, 960, 960, 3), (16, 576, 14, 576, 576, 3),
)


def probe_shapes(element_bytes: int) -> list[LayerShape]:
    """:data:`PROBES` as shapes (4 experts)."""
    return [LayerShape(n, c, h, h, m, g, k, k, h, h, 4, element_bytes, pointwise=k == 1)
            for n, c, h, m, g, k in PROBES]


def calibrate(time_path: Callable[[LayerShape, str, str], float], available: Iterable[str], device: str,
              l2_bytes: int, dtypes: Iterable[str] = ("float32", "float16")) -> CostModel:
    """A :class:`CostModel` from ``time_path(shape, path, dtype)`` (seconds per call) on those of
    :func:`probe_shapes` each available path applies to (at least three: four depthwise, four pointwise)."""
    model = CostModel(device, l2_bytes)
    for dtype in dtypes:
        shapes = probe_shapes(2 if dtype == "float16" else 4)
        for path in available:
            applicable = [s for s in shapes if path_applies(s, path)]
            if path in PATHS and len(applicable) >= 3:
                times = [time_path(s, path, dtype) for s in applicable]
                model.rates.setdefault(dtype, {})[path] = fit_rates(
                    [path_work(s, path, l2_bytes) for s in applicable], times)
    return model


def choose(model: Optional[CostModel], shape: LayerShape, dtype: str, available: Iterable[str],
           allow_tf32: bool, environ: Mapping[str, str] = os.environ) -> str:
    """The path for one call: ``$DYCONV_CUDA_ALGO`` where it applies, else ``auto`` (the kernels' heuristic)
    without a model or with ``$DYCONV_CUDA_COST_MODEL=0``, else the available path of least predicted time
    (tensor-core paths for float32 only when ``allow_tf32``)."""
    forced = environ.get(FORCE_ENV)
    if forced:
        if forced not in PATHS:
            raise DyconvError(f"{FORCE_ENV}={forced!r} is not a kernel path; choose one of {', '.join(PATHS)}")
        if path_applies(shape, forced) and forced in available:
            return forced
    if model is None or environ.get(COST_MODEL_ENV, "1") == "0":
        return "auto"
    candidates = [p for p in available if p in model.rates.get(dtype, {}) and path_applies(shape, p)
                  and (dtype == "float16" or allow_tf32 or p not in TENSOR_CORE_PATHS)]
    if not candidates:
        return "auto"
    return min(candidates, key=lambda p: model.predict(shape, p, dtype))


# Roofline bounds: the least time of a path, and of the static conv of the same shape, at a GPU's peaks.

@dataclass(frozen=True)
class GpuPeaks:
    """Datasheet peaks of one GPU (dense tensor-core rates, no sparsity)."""

    fp16_tensor_flops: float
    tf32_tensor_flops: float
    fp32_simt_flops: float
    dram_bytes_per_s: float
    l2_bytes: int


# NVIDIA's H100 SXM5 and H200 SXM datasheets: the same SMs and clocks, H200 with HBM3e. The PCIe and NVL cards
# have other clocks and memory, so they have no entry (roofline_gpu).
ROOFLINE_GPUS = {
    "H100": GpuPeaks(989.4e12, 494.7e12, 66.9e12, 3.35e12, 50 * 2**20),
    "H200": GpuPeaks(989.4e12, 494.7e12, 66.9e12, 4.8e12, 50 * 2**20),
}
BOUND_PRECISIONS = ("fp16", "tf32", "fp32")  # rows of path_bounds: tf32 = fp32 tensors, TF32 allowed


def roofline_gpu(device_name: str) -> Optional[str]:
    """The :data:`ROOFLINE_GPUS` key of a CUDA device name (``torch.cuda.get_device_name()``: "NVIDIA H100 80GB
    HBM3", "NVIDIA H200"), None for any other GPU, the H100/H200 PCIe and NVL cards included."""
    if "PCIe" in device_name or "NVL" in device_name:
        return None
    return next((key for key in ROOFLINE_GPUS if key in device_name.split()), None)


def bound_seconds(work: Work, tensor_flops_per_s: float, gpu: GpuPeaks, launch_s: float) -> float:
    """Least seconds ``work`` takes at ``gpu``'s peaks (``tensor_flops_per_s``: its tensor-core rate)."""
    compute = work.tensor_flops / tensor_flops_per_s + (work.flops - work.tensor_flops) / gpu.fp32_simt_flops
    return max(compute, work.dram_bytes / gpu.dram_bytes_per_s) + work.launches * launch_s


def static_conv_work(shape: LayerShape, on_tensor_cores: bool) -> Work:
    """The static conv of ``shape``: its FLOPs, X + one kernel + Y across DRAM, one launch."""
    s, e = shape, shape.element_bytes
    flops = 2.0 * s.n * s.kernel_elements * s.ho * s.wo
    dram = float(e * (s.n * s.c * s.h * s.w + s.kernel_elements + s.n * s.m * s.ho * s.wo))
    return Work(flops, dram, 1, flops if on_tensor_cores else 0.0)


def path_bounds(layer: LayerShape, precision: str, gpu: GpuPeaks, launch_s: float) -> dict:
    """The static conv's bound (``static_us``, microseconds) and each applicable path's bound as a multiple of it
    (``path_ratios``; the least: ``best_path``, ``best_ratio``) for ``precision`` (one of
    :data:`BOUND_PRECISIONS`); tensor-core paths only in the tf32 and fp16 rows (true fp32 has no tensor-core
    math), the MMAs at the fp16 or the TF32 rate."""
    tensor_rate = gpu.fp16_tensor_flops if precision == "fp16" else gpu.tf32_tensor_flops
    static = bound_seconds(static_conv_work(layer, precision != "fp32"), tensor_rate, gpu, launch_s)
    ratios = {path: bound_seconds(path_work(layer, path, gpu.l2_bytes), tensor_rate, gpu, launch_s) / static
              for path in PATHS
              if path_applies(layer, path) and (precision != "fp32" or path not in TENSOR_CORE_PATHS)}
    best = min(ratios, key=ratios.get)
    return {"static_us": static * 1e6, "path_ratios": ratios, "best_path": best, "best_ratio": ratios[best]}
