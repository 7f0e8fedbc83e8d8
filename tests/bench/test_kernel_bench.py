"""``benchmarks/kernel_bench.py`` without a GPU: which kernel paths a row times, and the table of every path.

The timing itself needs a GPU (``benchmarks/gpu_check.sh``); here a stand-in for ``dyconv_deploy.ops.cuda`` offers
every path, so what is checked is the choice of paths per layer and precision (tensor-core paths never in the
true-fp32 rows, ``depthwise`` and ``cublas-pointwise`` only where they apply) and that the table shows each path
against cuDNN, ``-`` where a path was not timed.
"""

from types import SimpleNamespace

import pytest
import torch

from dyconv_deploy.ops import cuda
from dyconv_deploy.ops.cuda_cost import PATHS, TENSOR_CORE_PATHS


def every_path_available() -> SimpleNamespace:
    return SimpleNamespace(available_algos=lambda: list(PATHS), layer_shape=cuda.layer_shape)


def layer(kernel_bench, c, m, kernel, groups=1, stride=(1, 1), padding=(0, 0, 0, 0), experts=4):
    return kernel_bench.LayerShape(c, 14, 14, m, experts, (kernel, kernel), stride, padding, (1, 1), groups, True)


def test_each_row_times_the_paths_that_apply_in_its_precision(kernel_bench):
    ops = every_path_available()
    pointwise, dense, depthwise = (layer(kernel_bench, 64, 96, 1), layer(kernel_bench, 64, 96, 3, padding=(1,) * 4),
                                   layer(kernel_bench, 96, 96, 3, groups=96, padding=(1,) * 4))
    simt = ["gemm-fused", "gemm-aggregated"]
    wmma = ["tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts"]
    assert kernel_bench.timed_paths(ops, pointwise, "fp32") == simt
    assert kernel_bench.timed_paths(ops, pointwise, "tf32") == [*simt, "cublas-pointwise", *wmma]
    assert kernel_bench.timed_paths(ops, dense, "fp16") == [*simt, *wmma]
    assert kernel_bench.timed_paths(ops, depthwise, "fp32") == ["depthwise", *simt]
    assert kernel_bench.timed_paths(ops, depthwise, "fp16") == ["depthwise", *simt, *wmma]
    many_experts = layer(kernel_bench, 64, 96, 3, padding=(1,) * 4, experts=65)
    assert "tensor-core-experts" not in kernel_bench.timed_paths(ops, many_experts, "tf32")
    without = SimpleNamespace(available_algos=lambda: [p for p in PATHS if p not in TENSOR_CORE_PATHS],
                              layer_shape=cuda.layer_shape)  # a build without cuBLAS on a GPU below sm_80
    assert kernel_bench.timed_paths(without, pointwise, "fp16") == simt


def test_the_table_shows_every_timed_path_against_cudnn(kernel_bench):
    row = {"precision": "fp16", "ours_math": "fp16 MMA (fp32 acc)", "sample": "dy_mobilenetv2",
           "layer": "320x7x7 -> 1280 k1x1 s1", "uses": 1, "batch": 256, "algo": "tensor-core-experts",
           "ours_ms": 0.30, "best_algo": "tensor-core-experts", "best_ms": 0.30, "cudnn_static_ms": 0.25,
           "grouped_ms": 0.60, "max_abs_err": 1e-3,
           "paths_ms": {"gemm-fused": 1.0, "gemm-aggregated": 2.0, "tensor-core-experts": 0.30}}
    table = kernel_bench.markdown([row], "# header", PATHS)
    header, rule, line = table.splitlines()[2:5]
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
    assert len(columns) == rule.count("---") == len(values)
    assert values["ours / cuDNN"] == "1.20" and values["ours / grouped"] == "0.50"
    assert values["gemm-fused / cuDNN"] == "4.00" and values["gemm-aggregated / cuDNN"] == "8.00"
    assert values["tensor-core-experts / cuDNN"] == "1.20"
    assert values["depthwise / cuDNN"] == values["cublas-pointwise / cuDNN"] == "-"


def test_each_row_says_how_far_ours_and_cudnn_are_from_their_roofline(kernel_bench):
    """The roofline columns: ours / cuDNN measured = (ours' bound / the static bound) x (cuDNN's share of its bound
    / ours' share of its bound); named GPUs only, and no bound for a path the precision does not bound."""
    from dyconv_deploy.ops.cuda_cost import ROOFLINE_GPUS, path_bounds

    shape = layer(kernel_bench, 256, 256, 3, padding=(1,) * 4)
    cost = kernel_bench.cost_shape(cuda, shape, 32, "fp16")
    assert (cost.n, cost.element_bytes, cost.ho) == (32, 2, 14)
    bound = kernel_bench.bound_entry(cost, "tensor-core-fused", "fp16", "NVIDIA H100 80GB HBM3", 0.5, 0.2)
    expected = path_bounds(cost, "fp16", ROOFLINE_GPUS["H100"], kernel_bench.BOUND_LAUNCH_S)
    assert bound["gpu"] == "H100" and bound["static_bound_ms"] == pytest.approx(expected["static_us"] / 1e3)
    assert bound["ours_bound_ratio"] == expected["path_ratios"]["tensor-core-fused"]
    assert bound["ours_bound_ratio"] * bound["cudnn_of_bound"] / bound["ours_of_bound"] == pytest.approx(0.5 / 0.2)
    assert bound["cudnn_of_bound"] == pytest.approx(expected["static_us"] / 1e3 / 0.2)
    pointwise = kernel_bench.cost_shape(cuda, layer(kernel_bench, 64, 96, 1), 32, "fp16")  # memory-bound
    h100, h200 = (kernel_bench.bound_entry(pointwise, "gemm-fused", "fp16", name, 0.5, 0.2)
                  for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"))
    assert h200["gpu"] == "H200" and h200["static_bound_ms"] < h100["static_bound_ms"]  # more bandwidth
    for other in ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL"):
        assert kernel_bench.bound_entry(cost, "tensor-core-fused", "fp16", other, 0.5, 0.2) is None, other
    fp32 = kernel_bench.bound_entry(kernel_bench.cost_shape(cuda, shape, 32, "fp32"), "tensor-core-fused", "fp32",
                                    "NVIDIA H100", 0.5, 0.2)
    assert fp32["ours_bound_ratio"] is None and fp32["ours_of_bound"] is None


def test_the_table_has_the_roofline_columns(kernel_bench):
    row = {"precision": "fp16", "ours_math": "fp16 MMA (fp32 acc)", "sample": "dy_resnet18",
           "layer": "256x14x14 -> 256 k3x3 s1", "uses": 3, "batch": 256, "algo": "tensor-core-fused",
           "ours_ms": 0.40, "best_algo": "tensor-core-fused", "best_ms": 0.40, "cudnn_static_ms": 0.10,
           "grouped_ms": 0.80, "max_abs_err": 1e-3, "paths_ms": {"tensor-core-fused": 0.40},
           "bound": {"gpu": "H100", "static_bound_ms": 0.06, "ours_bound_ratio": 2.46, "ours_of_bound": 0.369,
                     "cudnn_of_bound": 0.6}}
    unbounded = {**row, "bound": None}
    table = kernel_bench.markdown([row, unbounded], "# header", PATHS)
    header, rule, *lines = table.splitlines()[2:6]
    columns = [c.strip() for c in header.strip("|").split("|")]
    bounded, plain = (dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
                      for line in lines)
    assert len(columns) == rule.count("---")
    assert (bounded["ours bound / static bound"], bounded["ours % of bound"], bounded["cuDNN % of bound"]) == (
        "2.46", "37%", "60%")
    assert plain["ours bound / static bound"] == plain["ours % of bound"] == plain["cuDNN % of bound"] == "-"
    assert bounded["tensor-core-fused / cuDNN"] == "4.00"


def cpu_operands(shape, batch, dtype):
    """``kernel_bench.operands`` on the CPU (the real one draws on the GPU)."""
    g = torch.Generator().manual_seed(batch)
    return {"x": torch.randn(batch, shape.c, shape.h, shape.w, generator=g).to(dtype),
            "attention": torch.softmax(torch.randn(batch, shape.experts, generator=g), 1).to(dtype),
            "weight": (torch.randn(shape.experts, shape.m, shape.c // shape.groups, *shape.kernel, generator=g)
                       * 0.1).to(dtype),
            "bias": torch.randn(shape.experts, shape.m, generator=g).to(dtype) if shape.bias else None}


class TimedOps:
    """A stand-in for ``dyconv_deploy.ops.cuda`` whose timer runs ``fn`` once and returns the made-up ms of what it
    ran: a kernel path, cuDNN's static conv or the grouped reference (``kernel_bench``'s ``F`` and
    ``dynamic_conv2d_reference`` are patched to say when they run)."""

    MS = {"gemm-fused": 3.0, "gemm-aggregated": 2.0, "tensor-core-fused": 1.0, "cudnn": 0.5, "grouped": 4.0}

    def __init__(self, kernel_bench, monkeypatch, chosen, output_error=0.0):
        self.chosen, self.output_error, self.ran = chosen, output_error, None
        reference = kernel_bench.dynamic_conv2d_reference
        conv2d = kernel_bench.F.conv2d
        monkeypatch.setattr(kernel_bench, "operands", cpu_operands)
        monkeypatch.setattr(kernel_bench, "F", SimpleNamespace(conv2d=lambda *a: self.saw("cudnn", conv2d(*a))))
        monkeypatch.setattr(kernel_bench, "dynamic_conv2d_reference",
                            lambda **kw: self.saw("grouped", reference(**kw)))
        self.reference = reference

    def saw(self, name, result):
        self.ran = name
        return result

    def chosen_algo(self, x, attention, weight, **conv):
        return self.chosen

    def selected_algo(self, x, attention, weight, **conv):
        return "gemm-aggregated"  # the kernels' heuristic

    def dynamic_conv2d_cuda(self, *, algo, **kwargs):
        self.ran = algo
        return self.reference(**kwargs) + self.output_error  # the batch-folded math, not check_shape's per-sample one

    def median_call_ms(self, fn, iters, repeats, warmup):
        self.ran = None
        fn()
        return self.MS[self.ran]


def test_a_row_times_each_path_and_reports_the_chosen_and_the_fastest(kernel_bench, monkeypatch):
    """``bench_shape``: ours is the time of the path the cost model chose (the heuristic's path for ``auto``), best
    the fastest timed path, cuDNN the static conv and grouped the reference; the table divides by cuDNN's time."""
    shape = layer(kernel_bench, 8, 16, 3, padding=(1,) * 4)
    paths = ["gemm-fused", "gemm-aggregated", "tensor-core-fused"]
    auto = kernel_bench.bench_shape(TimedOps(kernel_bench, monkeypatch, "auto"), shape, 2, torch.float32, paths, 1, 1)
    assert auto == {"batch": 2, "algo": "auto", "heuristic_algo": "gemm-aggregated", "ours_ms": 2.0,
                    "best_algo": "tensor-core-fused", "best_ms": 1.0, "cudnn_static_ms": 0.5, "grouped_ms": 4.0,
                    "paths_ms": {"gemm-fused": 3.0, "gemm-aggregated": 2.0, "tensor-core-fused": 1.0}}
    fused = kernel_bench.bench_shape(TimedOps(kernel_bench, monkeypatch, "gemm-fused"), shape, 2, torch.float32,
                                     paths, 1, 1)
    assert (fused["algo"], fused["ours_ms"], fused["best_ms"]) == ("gemm-fused", 3.0, 1.0)
    row = {**fused, "precision": "tf32", "ours_math": "fp32", "sample": "s", "layer": shape.label, "uses": 1,
           "max_abs_err": 0.0}
    header, _, line = kernel_bench.markdown([row], "# header", PATHS).splitlines()[2:5]
    values = dict(zip((c.strip() for c in header.strip("|").split("|")),
                      (c.strip() for c in line.strip("|").split("|"))))
    assert (values["ours / cuDNN"], values["best / cuDNN"], values["ours / grouped"]) == ("6.00", "2.00", "0.75")


def test_the_check_reports_the_error_and_stops_on_a_mismatch(kernel_bench, monkeypatch):
    """``check_shape`` returns the max abs error of the kernel against the per-sample reference and exits on one out
    of tolerance (a benchmark of wrong kernels is worthless)."""
    shape = layer(kernel_bench, 8, 16, 3, padding=(1,) * 4)
    off = TimedOps(kernel_bench, monkeypatch, "auto", output_error=5e-5)  # within fp32's atol of 1e-4
    assert kernel_bench.check_shape(off, shape, torch.float32, "fp32") == pytest.approx(5e-5, rel=0.05)
    wrong = TimedOps(kernel_bench, monkeypatch, "auto", output_error=1e-2)
    with pytest.raises(SystemExit, match="kernel mismatch"):
        kernel_bench.check_shape(wrong, shape, torch.float32, "fp32", "gemm-fused")
