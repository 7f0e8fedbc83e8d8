"""``dyconv-deploy bench``: a dynamic model's graphs against its static twin, interleaved in one process."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dyconv_deploy.bench import BACKENDS
from dyconv_deploy.cli.options import (AdapterOption, ArchOption, ExpertDtypeOption, InputShapeOption, ModelArgument,
                                       PrecisionOption, TrustPickleOption, openvino_options, parse_batches,
                                       resolve_input_shape)
from dyconv_deploy.export.settings import STRATEGIES


def bench_command(
    model: ModelArgument,
    backend: Annotated[str, typer.Option(
        help=f"One of {', '.join(BACKENDS)} (openvino: OpenVINO CPU with the project's extension; torch: eager "
             "modules, no lowering).")] = "ort-cpu",
    strategy: Annotated[str, typer.Option(
        help="Comma-separated lowering strategies to time against the static twin; auto (not in the default): "
             "per layer, the fastest of plugin and experts on this engine, timed at each batch (cached), with the "
             "choices in the JSON.")] = ",".join(STRATEGIES),
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    warmup: Annotated[int, typer.Option(help="Untimed runs per graph and batch.")] = 5,
    iterations: Annotated[int, typer.Option(help="Timed runs per graph and batch.")] = 30,
    input_shape: InputShapeOption = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime / OpenVINO threads (0: one per core).")] = 0,
    profile: Annotated[bool, typer.Option(
        "--profile", help="Also run each graph under the engine's profiler and show the time per op category "
                          "(attention, mixing, convolution, other); ort-cpu and openvino.")] = False,
    baseline: Annotated[Optional[str], typer.Option(
        help="Also time the static twin on this engine (e.g. ort-cpu) in the same rounds and show each graph's "
             "ratio to it.", show_default=False)] = None,
    clock: Annotated[str, typer.Option(
        help="wall: latency; cpu: the process's CPU time per run, robust to other load on the machine "
             "(needs --threads 1).")] = "wall",
    precision: PrecisionOption = "f32",
    expert_dtype: ExpertDtypeOption = "f32",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results and environment here.",
                                                     show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of latency and ratio against batch size.",
                                                 show_default=False)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Cache of exported graphs and engines [default: $DYCONV_DEPLOY_CACHE or ~/.cache/dyconv-deploy].",
        show_default=False)] = None,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    adapter: AdapterOption = [],
) -> None:
    """Time MODEL's graphs (one per --strategy) against its static twin at each batch size.

    Every graph and the twin run interleaved in this process; the table shows p50/p90/p99 latency,
    throughput, the dynamic/static p50 ratio and memory. Graphs are exported once and cached.

    The static twin of sample:NAME is sample:NAME_static; for other models it is the model's own
    static-strategy graph (mean expert kernels, no attention).

    Examples:

        dyconv-deploy bench sample:dy_mobilenetv2 --batch 1,8 --json bench.json --plot bench.png

        dyconv-deploy bench sample:tiny_dynamic --strategy plugin,experts --iterations 10

        dyconv-deploy bench sample:dy_mobilenetv2 --backend openvino --strategy plugin --batch 1,8 --precision bf16

        dyconv-deploy bench sample:dy_mobilenetv2 --backend openvino --strategy plugin --batch 1,8 --baseline ort-cpu

        dyconv-deploy bench sample:dy_mobilenetv2 --strategy plugin,grouped --batch 1 --profile

        dyconv-deploy bench sample:dy_mobilenetv2 --strategy plugin,auto --batch 1,8 --threads 1 --clock cpu
    """
    from dyconv_deploy.bench import bench

    bench(model, backend, [s.strip() for s in strategy.split(",") if s.strip()], parse_batches(batch),
          warmup=warmup, iterations=iterations, input_shape=resolve_input_shape(model, input_shape),
          json_path=json_out, plot_path=plot, cache_dir=cache_dir, threads=threads, arch=arch,
          trust_pickle=trust_pickle, adapters=adapter,
          runtime_options=openvino_options(backend, precision, expert_dtype), profile=profile,
          baseline=baseline, clock=clock)
