"""Dynamic-conv kernels vs cuDNN, per distinct dynamic layer shape of DY-MobileNetV2 and DY-ResNet-18.

For every distinct ``DynamicConv2d`` shape of the two samples (224x224 input) at batch 1, 32
and 256, one run times side by side, with CUDA events around ``--iters`` back-to-back calls (one
synchronisation per group; the median of ``--repeats`` groups, per call):

* every path of ``plugins/kernels`` that applies to the shape and that the extension and GPU have
  (``depthwise``, ``gemm-fused``, ``gemm-aggregated``, ``cublas-pointwise``, ``tensor-core-fused``,
  ``-aggregated``, ``-experts``), through the torch extension; the tensor-core paths (TF32 for fp32
  tensors, fp16 operands with fp32 accumulation) only in the tf32 and fp16 rows;
* ``ours``: the path the cost model picks for the shape, batch and precision (``chosen_algo``; ``auto``
  is the kernels' batch-independent heuristic, ``heuristic_algo`` in the JSON), i.e. that path's time;
* ``cudnn-static``: ``F.conv2d`` with one static kernel of the same shape (the lower bound a
  dynamic conv is compared against);
* ``grouped``: the batch-folded grouped conv in PyTorch (einsum aggregation + one conv with
  ``groups * N``), i.e. :func:`dyconv_deploy.ops.reference.dynamic_conv2d_reference`.

Like is compared with like, one row per precision (``--precisions``): ``tf32`` (fp32 tensors, cuDNN and
matmul TF32 allowed: torch's default for convolutions), ``fp32`` (TF32 disabled: true fp32 everywhere)
and ``fp16``. The ``ours math`` column says what the chosen path computes in (fp32 FMA, or TF32 / fp16 MMA
for a tensor-core path, which fp32 tensors get only in the tf32 rows). ``best`` is the fastest path timed,
so ``ours / best`` is what the cost model's choice costs. Every timed path is checked once per shape and
precision against the per-sample reference at batch 1 (under the ``tensor-core-kernel`` tolerance for a
tensor-core path; the worst max abs error is in the table, each path's in the JSON). Writes
``kernel_bench_<gpu>.md`` and ``.json`` atomically under ``--out`` (default ``benchmarks/results``),
rewritten after every layer so an interrupted run keeps what it measured.

    python benchmarks/kernel_bench.py                          # tf32, fp32, fp16; batches 1 32 256
    python benchmarks/kernel_bench.py --precisions fp16 --iters 50
    python benchmarks/kernel_bench.py --list                   # the layer shapes only (CPU is enough)
"""

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from dyconv_deploy.nn.base import DynamicConvBase
from dyconv_deploy.ops.reference import dynamic_conv2d_reference, pad_input, per_sample_dynamic_conv2d
from dyconv_deploy.samples import create_sample, default_input_shape
from dyconv_deploy.tolerance import TOLERANCES, compare

SAMPLES = ("dy_mobilenetv2", "dy_resnet18")
# Precision -> (tensor dtype, TF32 allowed in cuDNN and matmul, what ours computes in, kernel tolerance).
PRECISIONS = {"tf32": (torch.float32, True, "fp32", "fp32"), "fp32": (torch.float32, False, "fp32", "fp32"),
              "fp16": (torch.float16, False, "fp16 (fp32 acc)", "fp16-kernel")}
RESULTS = Path(__file__).resolve().parent / "results"
BOUND_LAUNCH_S = 2e-6  # least time of one launch in the roofline columns (benchmarks/roofline.py's default)


@dataclass(frozen=True)
class LayerShape:
    """One distinct dynamic conv: input ``[c, h, w]``, ``m`` outputs, ``experts`` kernels."""

    c: int
    h: int
    w: int
    m: int
    experts: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    bias: bool

    @property
    def label(self) -> str:
        kind = "dw" if self.groups == self.c and self.groups > 1 else f"g{self.groups}" if self.groups > 1 else ""
        return (f"{self.c}x{self.h}x{self.w} -> {self.m} k{self.kernel[0]}x{self.kernel[1]} "
                f"s{self.stride[0]}{' ' + kind if kind else ''}")


def dynamic_layer_shapes(sample: str) -> dict[LayerShape, list[str]]:
    """Distinct dynamic conv shapes of ``sample`` -> the module paths that have them (one CPU forward)."""
    model = create_sample(sample).eval()
    shapes: dict[LayerShape, list[str]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, DynamicConvBase):
            def record(mod, inputs, _output, name=name):
                _, c, h, w = inputs[0].shape
                shape = LayerShape(c, h, w, mod.out_channels, mod.num_kernels, mod.kernel_size, mod.stride,
                                   mod.padding, mod.dilation, mod.groups, mod.bias is not None)
                shapes.setdefault(shape, []).append(name)
            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        model(torch.zeros(default_input_shape(sample)))
    for hook in hooks:
        hook.remove()
    return shapes


def operands(shape: LayerShape, batch: int, dtype: torch.dtype) -> dict:
    """Random CUDA operands of the contract for ``batch`` samples."""
    g = torch.Generator(device="cuda").manual_seed(batch)

    def randn(*dims):
        return torch.randn(*dims, generator=g, device="cuda")

    return {
        "x": randn(batch, shape.c, shape.h, shape.w).to(dtype),
        "attention": torch.softmax(randn(batch, shape.experts), dim=1).to(dtype),
        "weight": (randn(shape.experts, shape.m, shape.c // shape.groups, *shape.kernel) * 0.1).to(dtype),
        "bias": randn(shape.experts, shape.m).to(dtype) if shape.bias else None,
    }


def set_tf32(allowed: bool) -> None:
    """TF32 tensor cores for cuDNN convolutions and for matmuls (the grouped conv's einsum)."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def conv_kwargs(shape: LayerShape) -> dict:
    return {"stride": shape.stride, "padding": shape.padding, "dilation": shape.dilation, "groups": shape.groups}


def cost_shape(cuda_ops, shape: LayerShape, batch: int, precision: str):
    """The cost model's :class:`~dyconv_deploy.ops.cuda_cost.LayerShape` of ``shape`` at ``batch`` in
    ``precision``'s tensor dtype."""
    return cuda_ops.layer_shape(torch.empty(batch, shape.c, shape.h, shape.w, device="meta",
                                            dtype=PRECISIONS[precision][0]),
                                torch.empty(shape.experts, shape.m, shape.c // shape.groups, *shape.kernel,
                                            device="meta"),
                                shape.stride, shape.padding, shape.dilation, shape.groups)


def timed_paths(cuda_ops, shape: LayerShape, precision: str) -> list[str]:
    """The kernel paths a row of ``precision`` times: those that apply to ``shape`` and the extension and GPU
    have, tensor-core ones only where TF32 or fp16 is the precision."""
    from dyconv_deploy.ops.cuda_cost import TENSOR_CORE_PATHS, path_applies

    layer = cost_shape(cuda_ops, shape, 1, precision)  # which paths apply does not depend on the batch
    return [p for p in cuda_ops.available_algos()
            if path_applies(layer, p) and (precision != "fp32" or p not in TENSOR_CORE_PATHS)]


def bench_shape(cuda_ops, shape: LayerShape, batch: int, dtype: torch.dtype, paths: list[str], iters: int,
                repeats: int) -> dict:
    """Median times (ms per call) of each of ``paths``, cuDNN static and the grouped conv for one shape and batch,
    and ours: the time of the path the cost model picks (the heuristic's path for ``auto``)."""
    ops = operands(shape, batch, dtype)
    conv = conv_kwargs(shape)
    x_static, static_padding = pad_input(ops["x"], shape.padding)
    static_weight = ops["weight"][0].contiguous()
    static_bias = None if ops["bias"] is None else ops["bias"][0].contiguous()
    algo = cuda_ops.chosen_algo(ops["x"], ops["attention"], ops["weight"], **conv)  # the cost model's pick
    heuristic = cuda_ops.selected_algo(ops["x"], ops["attention"], ops["weight"], **conv)
    def median_ms(fn):  # per call, ms: CUDA events around groups of back-to-back calls
        return cuda_ops.median_call_ms(fn, iters, repeats, warmup=5)

    with torch.no_grad():
        paths_ms = {path: median_ms(lambda: cuda_ops.dynamic_conv2d_cuda(**ops, **conv, algo=path))
                    for path in paths}
        cudnn_ms = median_ms(lambda: F.conv2d(x_static, static_weight, static_bias, shape.stride, static_padding,
                                              shape.dilation, shape.groups))
        grouped_ms = median_ms(lambda: dynamic_conv2d_reference(**ops, **conv))
    ran = heuristic if algo == "auto" else algo
    best = min(paths_ms, key=paths_ms.get)
    return {"batch": batch, "algo": algo, "heuristic_algo": heuristic, "ours_ms": paths_ms[ran],
            "best_algo": best, "best_ms": paths_ms[best], "cudnn_static_ms": cudnn_ms, "grouped_ms": grouped_ms,
            "paths_ms": paths_ms}


def check_shape(cuda_ops, shape: LayerShape, dtype: torch.dtype, tolerance: str, algo: str = "auto") -> float:
    """Max abs error of ours (``algo``) against the per-sample reference at batch 1 (raises when out of
    tolerance)."""
    ops = operands(shape, 1, dtype)
    conv = conv_kwargs(shape)
    with torch.no_grad():
        y = cuda_ops.dynamic_conv2d_cuda(**ops, **conv, algo=algo)
        expected = per_sample_dynamic_conv2d(**{k: None if v is None else v.double() for k, v in ops.items()},
                                             **conv)
    result = compare(y, expected, TOLERANCES[tolerance], name=f"{shape.label} ({algo})")
    if not result.passed:
        raise SystemExit(f"kernel mismatch: {result}")
    return result.max_abs


def bound_entry(layer, ran: str, precision: str, gpu_name: str, ours_ms: float, cudnn_ms: float) -> Optional[dict]:
    """Where a row stands against the roofline (:func:`~dyconv_deploy.ops.cuda_cost.path_bounds`, for an H100 or
    H200 SXM by name (:func:`~dyconv_deploy.ops.cuda_cost.roofline_gpu`), else None): the bound of the path ours
    ran as a multiple of the static conv's, and the share of its bound that ours and cuDNN each reached (bound
    time / measured time), so that ours / cuDNN = ``ours_bound_ratio * cudnn_of_bound / ours_of_bound``: the
    algorithm's cost times the kernels' efficiency."""
    from dyconv_deploy.ops.cuda_cost import ROOFLINE_GPUS, path_bounds, roofline_gpu

    gpu = roofline_gpu(gpu_name)
    if gpu is None:
        return None
    bounds = path_bounds(layer, precision, ROOFLINE_GPUS[gpu], BOUND_LAUNCH_S)
    ratio = bounds["path_ratios"].get(ran)
    static_ms = bounds["static_us"] / 1e3
    return {"gpu": gpu, "static_bound_ms": static_ms, "ours_bound_ratio": ratio,
            "ours_of_bound": None if ratio is None else static_ms * ratio / ours_ms,
            "cudnn_of_bound": static_ms / cudnn_ms}


def _bound_cells(bound: Optional[dict]) -> str:
    if not bound or bound["ours_bound_ratio"] is None:
        return "- | - | " + (f"{bound['cudnn_of_bound']:.0%}" if bound else "-")
    return f"{bound['ours_bound_ratio']:.2f} | {bound['ours_of_bound']:.0%} | {bound['cudnn_of_bound']:.0%}"


def markdown(rows: list[dict], header: str, paths: tuple[str, ...]) -> str:
    """The table of ``rows``: one line per precision, layer and batch, the roofline columns of
    :func:`bound_entry` (``-`` for a GPU without datasheet peaks), then each of ``paths`` as a multiple of
    cuDNN's time (``-`` where it was not timed)."""
    lines = [header, "",
             "| precision | ours math | sample | layer (C x H x W -> M) | uses | batch | ours path | ours ms "
             "| best path | cuDNN static ms | grouped ms | ours / cuDNN | best / cuDNN | ours / grouped "
             "| max abs err (b=1) | ours bound / static bound | ours % of bound | cuDNN % of bound | "
             + " | ".join(f"{p} / cuDNN" for p in paths) + " |",
             "|" + "---|" * (18 + len(paths))]
    for r in rows:
        cudnn = r["cudnn_static_ms"]
        per_path = " | ".join(f"{r['paths_ms'][p] / cudnn:.2f}" if p in r["paths_ms"] else "-" for p in paths)
        lines.append(f"| {r['precision']} | {r['ours_math']} | {r['sample']} | {r['layer']} | {r['uses']} "
                     f"| {r['batch']} | {r['algo']} | {r['ours_ms']:.4f} | {r['best_algo']} | {cudnn:.4f} "
                     f"| {r['grouped_ms']:.4f} | {r['ours_ms'] / cudnn:.2f} | {r['best_ms'] / cudnn:.2f} "
                     f"| {r['ours_ms'] / r['grouped_ms']:.2f} | {r['max_abs_err']:.2e} "
                     f"| {_bound_cells(r.get('bound'))} "
                     f"| {per_path} |")
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", choices=PRECISIONS, nargs="+", default=list(PRECISIONS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--iters", type=int, default=20, help="back-to-back calls per timed group")
    parser.add_argument("--repeats", type=int, default=5, help="timed groups per measurement (median)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the .md and .json results")
    parser.add_argument("--list", action="store_true", help="print the distinct layer shapes and exit")
    args = parser.parse_args(argv)

    layers = {sample: dynamic_layer_shapes(sample) for sample in SAMPLES}
    if args.list:
        for sample, shapes in layers.items():
            print(f"{sample}: {len(shapes)} distinct dynamic layer shapes")
            for shape, names in shapes.items():
                print(f"  {shape.label:<34} x{len(names)}  e.g. {names[0]}")
        return 0
    if not torch.cuda.is_available():
        print("kernel_bench: no CUDA device (the benchmark times GPU kernels; --list works on a CPU)",
              file=sys.stderr)
        return 2

    from dyconv_deploy.ops import cuda as cuda_ops
    from dyconv_deploy.ops.cuda_cost import PATHS, TENSOR_CORE_PATHS

    cuda_ops.enable_cuda_kernels()
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name()
    header = (f"# Dynamic conv kernels vs cuDNN ({gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"per call: median of {args.repeats} groups of {args.iters} calls)\n\n"
              f"Generated by `python benchmarks/kernel_bench.py --precisions {' '.join(args.precisions)}`. "
              "tf32: cuDNN and matmul TF32 allowed; fp32: TF32 disabled. Ratios < 1 mean ours is faster.")
    stem = args.out / f"kernel_bench_{gpu.replace(' ', '_')}"
    rows = []
    for precision in args.precisions:
        dtype, tf32, ours_math, tolerance = PRECISIONS[precision]
        set_tf32(tf32)
        for sample, shapes in layers.items():
            for shape, names in shapes.items():
                paths = timed_paths(cuda_ops, shape, precision)
                errors = {path: check_shape(cuda_ops, shape, dtype,
                                            "tensor-core-kernel" if path in TENSOR_CORE_PATHS else tolerance, path)
                          for path in paths}  # max abs error at batch 1, each timed path once
                for batch in args.batches:
                    row = bench_shape(cuda_ops, shape, batch, dtype, paths, args.iters, args.repeats)
                    ran = row["heuristic_algo"] if row["algo"] == "auto" else row["algo"]
                    mma = ran in TENSOR_CORE_PATHS
                    math = ("TF32 MMA" if dtype == torch.float32 else "fp16 MMA (fp32 acc)") if mma else ours_math
                    bound = bound_entry(cost_shape(cuda_ops, shape, batch, precision), ran, precision, gpu,
                                        row["ours_ms"], row["cudnn_static_ms"])
                    rows.append({"precision": precision, "ours_math": math, "sample": sample,
                                 "layer": shape.label, "uses": len(names), "max_abs_err": max(errors.values()),
                                 "path_errors": errors, "shape": asdict(shape), "bound": bound, **row})
                    print(f"{precision:<5} {sample:<15} {shape.label:<34} b={batch:<4} {row['algo']:<22} "
                          f"ours {row['ours_ms']:.4f} ms  best {row['best_algo']} {row['best_ms']:.4f} ms  "
                          f"cuDNN {row['cudnn_static_ms']:.4f} ms  grouped {row['grouped_ms']:.4f} ms", flush=True)
                atomic_write(stem.with_suffix(".md"), markdown(rows, header, PATHS))
                atomic_write(stem.with_suffix(".json"), json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
