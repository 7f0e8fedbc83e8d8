"""``demo``: the main job end to end on this machine's CPU engines (ONNX Runtime, and OpenVINO when installed).

sample DY-MobileNetV2 -> convert -> export -> lower to every strategy -> verify each against
PyTorch (the plugin graph on OpenVINO too) -> bench against the static twin on each engine.
Writes ``<output>/<strategy>.onnx``, ``bench.json`` (ONNX Runtime), ``bench-openvino.json`` and,
with matplotlib installed, the matching ``.png`` plots; graphs are cached (:mod:`.graphs`), so a
second run skips the export.
"""

from pathlib import Path
from typing import Optional, Sequence

import torch
from rich.console import Console

from dyconv_deploy.bench.core import bench
from dyconv_deploy.deps import available
from dyconv_deploy.bench.graphs import GraphSet, default_cache_dir, twin_spec
from dyconv_deploy.errors import DyconvError, VerificationError
from dyconv_deploy.export.settings import DEFAULT_OPSET, STRATEGIES
from dyconv_deploy.nn import DynamicConvBase
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.trt.sidecar import atomic_write_bytes

STAGES = ("load", "convert", "export", "verify", "bench")
# Engine -> (strategies it benches, stem of its JSON/PNG files). OpenVINO runs the plugin graph with the
# project's extension; its experts lowering (K x the conv FLOPs) is left out there, where it is the slowest.
ENGINES = {"ort-cpu": (STRATEGIES, "bench"), "openvino": (("plugin", "grouped", "static"), "bench-openvino")}


def default_engines() -> tuple[str, ...]:
    """ONNX Runtime, plus OpenVINO when the ``openvino`` package is installed."""
    return ("ort-cpu", "openvino") if available("openvino") else ("ort-cpu",)


def run_demo(output_dir: str | Path = "demo-out", *, sample: str = "dy_mobilenetv2", batches: Sequence[int] = (1, 8),
             warmup: int = 2, iterations: int = 10, cache_dir: Optional[str | Path] = None,
             engines: Optional[Sequence[str]] = None, console: Optional[Console] = None) -> dict:
    """Run the pipeline on ``sample`` and bench it on each of ``engines`` (default :func:`default_engines`).

    Returns:
        ``{engine: BenchResult}``.
    Raises:
        VerificationError: a lowered graph disagrees with PyTorch (``TOLERANCES["fp32"]``).
    """
    from dyconv_deploy.convert import convert_model
    from dyconv_deploy.export.report import Checklist
    from dyconv_deploy.io import load_model
    from dyconv_deploy.samples import default_input_shape, list_samples

    console = console or Console()
    output = Path(output_dir)
    spec, shape = f"sample:{sample}", tuple(default_input_shape(sample))
    twin = twin_spec(spec)
    if twin is None:
        raise DyconvError(f"the demo needs a dynamic sample with a static twin; {sample!r} has none (choose one of: "
                          f"{', '.join(n for n in list_samples() if twin_spec(f'sample:{n}'))})")
    engines = tuple(engines or default_engines())
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown:
        raise DyconvError(f"the demo runs on {', '.join(ENGINES)}; got {', '.join(unknown)}")
    bench_stages = tuple(f"bench {engine}" for engine in engines)
    checklist = Checklist(STAGES[:-1] + bench_stages)
    results = {}
    try:
        with checklist.stage("load") as row:
            source = load_model(spec)
            row.detail = f"{spec}: {sum(p.numel() for p in source.parameters()) / 1e6:.1f} M parameters"
        with checklist.stage("convert") as row:
            example = torch.randn(1, *shape[1:], generator=torch.Generator().manual_seed(0))
            model, report = convert_model(source, example)
            layers = sum(isinstance(m, DynamicConvBase) for m in model.modules())
            row.detail = (f"{len(report.converted)} foreign dynamic conv(s) replaced; {layers} canonical dynamic "
                          "conv layers")
        with checklist.stage("export") as row:
            graphs = GraphSet(model, load_model(twin), shape,
                              Path(cache_dir) if cache_dir else default_cache_dir(), DEFAULT_OPSET)
            files = {strategy: _copy(graphs.path(strategy, 1), output / f"{strategy}.onnx") for strategy in STRATEGIES}
            row.detail = f"{', '.join(STRATEGIES)} -> {output}/ (grouped at batch 1)"
        with checklist.stage("verify") as row:
            worst = _verify(model, files, shape, engines)
            row.detail = (f"plugin, experts, grouped vs PyTorch ({', '.join(engines)}): max abs error {worst:.2g} "
                          "(static is a baseline)")
        plot = available("matplotlib")
        for engine, stage in zip(engines, bench_stages):
            with checklist.stage(stage) as row:
                strategies, stem = ENGINES[engine]
                result = bench(spec, engine, strategies, batches, warmup=warmup, iterations=iterations,
                               input_shape=shape, json_path=output / f"{stem}.json",
                               plot_path=output / f"{stem}.png" if plot else None, cache_dir=cache_dir,
                               console=console)
                results[engine] = result
                plugin = [f"{r.ratio:.2f}x at batch {r.batch}" for r in result.rows if r.strategy == "plugin"]
                row.detail = f"plugin vs static twin: {', '.join(plugin)}" + (
                    "" if plot else f" (no {stem}.png: pip install 'dyconv-deploy[plot]' for the plot)")
    finally:
        console.print(checklist.table(f"demo: {spec} on {' and '.join(engines)} (CPU)"))
    return results


def _copy(source: Path, target: Path) -> Path:
    return atomic_write_bytes(target, source.read_bytes())


def _verify(model, files: dict, shape, engines: Sequence[str]) -> float:
    """Largest max-abs error over the equivalent graphs (the plugin graph also on OpenVINO when it is one of
    ``engines``); raises when one is over tolerance."""
    from dyconv_deploy.verify import verify_onnx

    comparisons = []
    for strategy in ("plugin", "experts", "grouped"):
        batches = [1] if strategy == "grouped" else [1, 2]
        comparisons += verify_onnx(model, files[strategy], shape, batches, TOLERANCES["fp32"])
    if "openvino" in engines:
        comparisons += verify_onnx(model, files["plugin"], shape, [1, 2], TOLERANCES["fp32"], backend="openvino")
    failed = [str(c) for c in comparisons if not c.passed]
    if failed:
        raise VerificationError("; ".join(failed))
    return max(c.max_abs for c in comparisons)
