"""Dynamic-conv kernels vs cuDNN, per distinct dynamic layer shape of DY-MobileNetV2 and DY-ResNet-18.

For every distinct ``DynamicConv2d`` shape of the two samples (224x224 input) at batch 1, 32
and 256, one run times side by side, with CUDA events around ``--iters`` back-to-back calls (one
synchronisation per group; the median of ``--repeats`` groups, per call):

* ``ours``: ``plugins/kernels`` through the torch extension, on the path its cost model picks for the
  shape, batch and precision (``chosen_algo``; ``heuristic_algo`` in the JSON is the kernels' own
  batch-independent choice);
* ``cudnn-static``: ``F.conv2d`` with one static kernel of the same shape (the lower bound a
  dynamic conv is compared against);
* ``grouped``: the batch-folded grouped conv in PyTorch (einsum aggregation + one conv with
  ``groups * N``), i.e. :func:`dyconv_deploy.ops.reference.dynamic_conv2d_reference`;
* ``tensor-core``: ``plugins/kernels``' ``tensor-core-fused`` path (WMMA: TF32 for fp32 tensors, fp16
  operands with fp32 accumulation) in the tf32 and fp16 rows, when the GPU is sm_80 or later (else ``-``).

Like is compared with like, one row per precision (``--precisions``): ``tf32`` (fp32 tensors, cuDNN and
matmul TF32 allowed: torch's default for convolutions), ``fp32`` (TF32 disabled: true fp32 everywhere)
and ``fp16``. The ``ours math`` column says what the chosen path computes in (fp32 FMA, or TF32 / fp16 MMA
when the cost model picks a tensor-core path, which it does for fp32 tensors only in the tf32 rows).
It also checks each path ``ours`` takes (under the ``tensor-core-kernel`` tolerance for a tensor-core one),
and ``tensor-core``, against the per-sample reference at batch 1 (max abs error columns).
Writes ``kernel_bench_<gpu>.md`` and ``.json`` atomically under ``--out`` (default
``benchmarks/results``), rewritten after every layer so an interrupted run keeps what it measured.

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


def bench_shape(cuda_ops, shape: LayerShape, batch: int, dtype: torch.dtype, iters: int, repeats: int,
                tensor_cores: bool = False) -> dict:
    """Median times (ms) of ours, cuDNN static and the grouped conv (and, with ``tensor_cores``, ours on the
    tensor-core-fused path; else None) for one shape and batch."""
    ops = operands(shape, batch, dtype)
    conv = {"stride": shape.stride, "padding": shape.padding, "dilation": shape.dilation, "groups": shape.groups}
    x_static, static_padding = pad_input(ops["x"], shape.padding)
    static_weight = ops["weight"][0].contiguous()
    static_bias = None if ops["bias"] is None else ops["bias"][0].contiguous()
    algo = cuda_ops.chosen_algo(ops["x"], ops["attention"], ops["weight"], **conv)  # the cost model's pick
    def median_ms(fn):  # per call, ms: CUDA events around groups of back-to-back calls
        return cuda_ops.median_call_ms(fn, iters, repeats, warmup=5)

    with torch.no_grad():
        timings = {
            "ours": median_ms(lambda: cuda_ops.dynamic_conv2d_cuda(**ops, **conv, algo=algo)),
            "cudnn_static": median_ms(lambda: F.conv2d(x_static, static_weight, static_bias, shape.stride,
                                                       static_padding, shape.dilation, shape.groups)),
            "grouped": median_ms(lambda: dynamic_conv2d_reference(**ops, **conv)),
            "tensor_core": median_ms(lambda: cuda_ops.dynamic_conv2d_cuda(**ops, **conv, algo="tensor-core-fused"))
                           if tensor_cores else None,
        }
    heuristic = cuda_ops.selected_algo(ops["x"], ops["attention"], ops["weight"], **conv)
    return {"batch": batch, "algo": algo, "heuristic_algo": heuristic, **{f"{k}_ms": v for k, v in timings.items()}}


def check_shape(cuda_ops, shape: LayerShape, dtype: torch.dtype, tolerance: str, algo: str = "auto") -> float:
    """Max abs error of ours (``algo``) against the per-sample reference at batch 1 (raises when out of
    tolerance)."""
    ops = operands(shape, 1, dtype)
    conv = {"stride": shape.stride, "padding": shape.padding, "dilation": shape.dilation, "groups": shape.groups}
    with torch.no_grad():
        y = cuda_ops.dynamic_conv2d_cuda(**ops, **conv, algo=algo)
        expected = per_sample_dynamic_conv2d(**{k: None if v is None else v.double() for k, v in ops.items()},
                                             **conv)
    result = compare(y, expected, TOLERANCES[tolerance], name=shape.label)
    if not result.passed:
        raise SystemExit(f"kernel mismatch: {result}")
    return result.max_abs


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| precision | ours math | sample | layer (C x H x W -> M) | uses | batch | path | ours ms "
             "| cuDNN static ms | grouped ms | ours / cuDNN | ours / grouped | max abs err (b=1) "
             "| tensor-core ms | tensor-core / cuDNN | tensor-core max abs err (b=1) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tc = r.get("tensor_core_ms")
        tc_columns = (f"| {tc:.4f} | {tc / r['cudnn_static_ms']:.2f} | {r['tensor_core_err']:.2e} |"
                      if tc is not None else "| - | - | - |")
        lines.append(f"| {r['precision']} | {r['ours_math']} | {r['sample']} | {r['layer']} | {r['uses']} "
                     f"| {r['batch']} | {r['algo']} "
                     f"| {r['ours_ms']:.4f} | {r['cudnn_static_ms']:.4f} | {r['grouped_ms']:.4f} "
                     f"| {r['ours_ms'] / r['cudnn_static_ms']:.2f} | {r['ours_ms'] / r['grouped_ms']:.2f} "
                     f"| {r['max_abs_err']:.2e} {tc_columns}")
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
    from dyconv_deploy.ops.cuda_cost import TENSOR_CORE_PATHS

    cuda_ops.enable_cuda_kernels()
    tensor_core_gpu = "tensor-core-fused" in cuda_ops.available_algos()
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
        tensor_cores = tensor_core_gpu and precision != "fp32"  # TF32 is not fp32
        for sample, shapes in layers.items():
            for shape, names in shapes.items():
                errors = {}  # path -> max abs error at batch 1, each path the cost model picks checked once
                tc_error = (check_shape(cuda_ops, shape, dtype, "tensor-core-kernel", "tensor-core-fused")
                            if tensor_cores else None)
                for batch in args.batches:
                    row = bench_shape(cuda_ops, shape, batch, dtype, args.iters, args.repeats, tensor_cores)
                    mma = row["algo"] in TENSOR_CORE_PATHS
                    if row["algo"] not in errors:
                        errors[row["algo"]] = check_shape(cuda_ops, shape, dtype,
                                                          "tensor-core-kernel" if mma else tolerance, row["algo"])
                    math = ("TF32 MMA" if dtype == torch.float32 else "fp16 MMA (fp32 acc)") if mma else ours_math
                    rows.append({"precision": precision, "ours_math": math, "sample": sample,
                                 "layer": shape.label, "uses": len(names), "max_abs_err": errors[row["algo"]],
                                 "tensor_core_err": tc_error, "shape": asdict(shape), **row})
                    tc = f"  tensor-core {row['tensor_core_ms']:.4f} ms" if tensor_cores else ""
                    print(f"{precision:<5} {sample:<15} {shape.label:<34} b={batch:<4} {row['algo']:<16} "
                          f"ours {row['ours_ms']:.4f} ms  cuDNN {row['cudnn_static_ms']:.4f} ms  "
                          f"grouped {row['grouped_ms']:.4f} ms{tc}", flush=True)
                atomic_write(stem.with_suffix(".md"), markdown(rows, header))
                atomic_write(stem.with_suffix(".json"), json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
