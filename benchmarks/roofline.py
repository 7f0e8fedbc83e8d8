"""Roofline bounds: how close each kernel path can come to the static conv, per dynamic layer (no GPU needed).

For every distinct dynamic layer of DY-MobileNetV2 and DY-ResNet-18 (``kernel_bench.py``'s shapes) at
batch 1, 32 and 256, the work the cost model counts for each kernel path
(:func:`~dyconv_deploy.ops.cuda_cost.path_work`: FLOPs on tensor cores and on the SIMT units, DRAM bytes,
launches) becomes the least time a GPU could take for it (:func:`~dyconv_deploy.ops.cuda_cost.path_bounds`)::

    bound = max(tensor FLOPs / tensor peak + SIMT FLOPs / SIMT peak, DRAM bytes / bandwidth)
            + launches * launch floor

and so does the static conv of the same shape (cuDNN's lower bound: one launch, X + W + Y bytes, unpadded
FLOPs on tensor cores in the tf32 and fp16 rows, on the SIMT units in the fp32 row). ``path / static`` is
then the best ratio that path could reach if both ran at the datasheet peaks; a real kernel gets a fraction
of its peak, cuDNN a large one, so a measured ratio (``kernel_bench.py``, ``benchmarks/gpu_check.sh``) is
this one divided by our efficiency relative to cuDNN's. A layer whose best bound is already above a goal
cannot reach that goal with these algorithms, however well tuned; that is what this table is for.

The dynamic FLOPs are the MMAs' padded ones plus mixing (fp32 FMAs on the SIMT units), the bytes count
the experts again where they outgrow half of L2 and the per-sample kernels of the aggregated paths; see
``dyconv_deploy/ops/cuda_cost.py``. The network rows sum ``uses x bound`` over the dynamic convs of each
sample only (no batch norm, activations or attention branch), dynamic path = each layer's best.

    python benchmarks/roofline.py                       # H100 SXM, fp16 tf32 fp32, batches 1 32 256
    python benchmarks/roofline.py --gpu H200 --precisions fp16
"""

import argparse
import json
import sys
from pathlib import Path

import kernel_bench  # the sibling script (on sys.path as the script's folder): layer shapes, atomic writes
from dyconv_deploy.ops import cuda as cuda_ops
from dyconv_deploy.ops.cuda_cost import BOUND_PRECISIONS, PATHS, ROOFLINE_GPUS, path_bounds


def markdown(rows: list[dict], networks: list[dict], header: str) -> str:
    """The per-layer table (each path's bound / the static bound, ``-`` where it does not apply), then the
    per-network sums."""
    lines = [header, "", "| precision | sample | layer (C x H x W -> M) | uses | batch | static bound us | best path "
             "| best / static | " + " | ".join(f"{p} / static" for p in PATHS) + " |",
             "|" + "---|" * (8 + len(PATHS))]
    for r in rows:
        per_path = " | ".join(f"{r['path_ratios'][p]:.2f}" if p in r["path_ratios"] else "-" for p in PATHS)
        lines.append(f"| {r['precision']} | {r['sample']} | {r['layer']} | {r['uses']} | {r['batch']} "
                     f"| {r['static_us']:.2f} | {r['best_path']} | {r['best_ratio']:.2f} | {per_path} |")
    lines += ["", "Dynamic convs of each network (uses x bound summed; each layer on its best path):", "",
              "| precision | sample | batch | static us | dynamic us | dynamic / static | worst layer / static |",
              "|---|---|---|---|---|---|---|"]
    for n in networks:
        lines.append(f"| {n['precision']} | {n['sample']} | {n['batch']} | {n['static_us']:.1f} "
                     f"| {n['dynamic_us']:.1f} | {n['ratio']:.2f} | {n['worst_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=ROOFLINE_GPUS, default="H100", help="whose datasheet peaks")
    parser.add_argument("--precisions", choices=BOUND_PRECISIONS, nargs="+", default=["fp16", "tf32", "fp32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--launch-us", type=float, default=kernel_bench.BOUND_LAUNCH_S * 1e6,
                        help="least time of one kernel launch")
    parser.add_argument("--out", type=Path, default=kernel_bench.RESULTS, help="folder of the .md and .json")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches):
        parser.error("--batches must be positive")

    gpu, launch_s = ROOFLINE_GPUS[args.gpu], args.launch_us * 1e-6
    layers = {sample: kernel_bench.dynamic_layer_shapes(sample) for sample in kernel_bench.SAMPLES}
    rows, networks = [], []
    for precision in args.precisions:
        for sample, shapes in layers.items():
            for batch in args.batches:
                sums = {"static_us": 0.0, "dynamic_us": 0.0}
                worst = 0.0
                for shape, names in shapes.items():
                    bounds = path_bounds(kernel_bench.cost_shape(cuda_ops, shape, batch, precision), precision, gpu,
                                         launch_s)
                    rows.append({"precision": precision, "sample": sample, "layer": shape.label,
                                 "uses": len(names), "batch": batch, **bounds})
                    sums["static_us"] += len(names) * bounds["static_us"]
                    sums["dynamic_us"] += len(names) * bounds["static_us"] * bounds["best_ratio"]
                    worst = max(worst, bounds["best_ratio"])
                networks.append({"precision": precision, "sample": sample, "batch": batch, **sums,
                                 "ratio": sums["dynamic_us"] / sums["static_us"], "worst_ratio": worst})
    header = (f"# Roofline bounds of the dynamic conv paths vs the static conv ({args.gpu} datasheet peaks, "
              f"launch floor {args.launch_us:g} us)\n\nGenerated by `python benchmarks/roofline.py --gpu {args.gpu}"
              f" --precisions {' '.join(args.precisions)}`: each path's least possible time as a multiple of the "
              "static conv's; not a measurement.")
    stem = args.out / f"roofline_{args.gpu}"
    kernel_bench.atomic_write(stem.with_suffix(".md"), markdown(rows, networks, header))
    kernel_bench.atomic_write(stem.with_suffix(".json"),
                              json.dumps({"gpu": args.gpu, "peaks": ROOFLINE_GPUS[args.gpu].__dict__, "rows": rows,
                                          "networks": networks}, indent=1))
    for n in networks:
        print(f"{n['precision']:<5} {n['sample']:<15} b={n['batch']:<4} dynamic convs / static: {n['ratio']:.2f} "
              f"(worst layer {n['worst_ratio']:.2f})")
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
