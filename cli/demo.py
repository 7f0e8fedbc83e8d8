"""``dyconv-deploy demo``: DY-MobileNetV2 through convert, export, verify and bench on ONNX Runtime (CPU)."""

from pathlib import Path
from typing import Annotated

import typer

from dyconv_deploy.cli.options import parse_batches


def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the graphs, bench.json and bench.png.")]
    = Path("demo-out"),
    sample: Annotated[str, typer.Option(help="The bundled sample to run (see dyconv-deploy inspect).")]
    = "dy_mobilenetv2",
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes to bench.")] = "1,8",
    iterations: Annotated[int, typer.Option(help="Timed runs per graph and batch (few, to finish quickly).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed runs per graph and batch.")] = 2,
    engine: Annotated[str, typer.Option(
        help="Comma-separated engines to bench: ort-cpu, openvino; 'auto': both when openvino is installed.")]
    = "auto",
) -> None:
    """Run the main job on a bundled sample (DY-MobileNetV2) with this machine's defaults.

    Converts the sample, exports it once and lowers it to every strategy (plugin, experts,
    grouped, static), verifies each equivalent graph against PyTorch, then benches them against
    the static twin (sample:NAME_static) on ONNX Runtime CPU and, when the openvino package is
    installed, on OpenVINO with the project's extension (the two tables side by side), writing
    OUTPUT/<strategy>.onnx, OUTPUT/bench.json, OUTPUT/bench-openvino.json and (with matplotlib)
    their .png plots. Graphs are cached, so a second run is faster.

    Examples:

        dyconv-deploy demo

        dyconv-deploy demo -o out --batch 1,8,32 --iterations 30

        dyconv-deploy demo --sample dy_resnet18 --engine openvino
    """
    from dyconv_deploy.bench.demo import run_demo

    engines = None if engine == "auto" else tuple(e.strip() for e in engine.split(",") if e.strip())
    run_demo(output, sample=sample, batches=parse_batches(batch), warmup=warmup, iterations=iterations,
             engines=engines)
