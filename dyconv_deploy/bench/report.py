"""Benchmark output: the rich table, the JSON file (with the environment) and the PNG plot."""

import io
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import torch
from rich.table import Table

from dyconv_deploy.deps import require
from dyconv_deploy.trt.sidecar import atomic_write_bytes

_PACKAGES = ("dyconv-deploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "tensorrt")


def environment() -> dict:
    """Versions, CPU, thread counts and GPU of this process, for the JSON report."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(result) -> Table:
    """Per batch: the static twin, then each strategy with its dynamic/static p50 ratio."""
    clock = " (CPU time per run, 1 thread)" if result.settings.get("clock") == "cpu" else ""
    out = Table(title=f"bench {result.model} on {result.backend} (twin: {result.twin}){clock}")
    versus = [f"vs {result.baseline} twin"] if result.baseline else []
    for column in ("graph", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "dyn/static", *versus, "mem MB"):
        out.add_column(column, justify="left" if column == "graph" else "right", no_wrap=True)
    for batch in result.batches:
        rows = [row for row in result.rows if row.batch == batch]
        baseline = rows[0].baseline
        if baseline is not None:
            _add_row(out, f"static twin ({result.baseline})", baseline, "", ["1.00x"], style="dim")
        _add_row(out, "static twin", rows[0].static, "1.00x",
                 [f"{rows[0].static.p50_ms / baseline.p50_ms:.2f}x"] if baseline else [], style="dim")
        for row in rows:
            _add_row(out, row.strategy, row.stats, f"{row.ratio:.2f}x",
                     [f"{row.baseline_ratio:.2f}x"] if baseline else [], end_section=row is rows[-1])
    return out


# Measured: the counters credited a fused routing kernel with saving 1.2 ms of DY-MobileNetV2's 9 ms; it saved 0.1.
OPENVINO_PROFILE_CAVEAT = ("OpenVINO's per-node counters overstate graphs of many tiny nodes (the attention branches); "
                           "for what removing a part saves, time it: benchmarks/openvino_ablation.py")


def profile_table(result) -> Table:
    """Per batch and graph: milliseconds per run in each op category, as the engine's profiler saw them."""
    from dyconv_deploy.bench.profile import CATEGORIES

    out = Table(title=f"where the time goes on {result.backend} (ms per run, engine profiler)",
                caption=OPENVINO_PROFILE_CAVEAT if result.backend == "openvino" else None)
    for column in ("graph", "batch", *CATEGORIES, "total", "nodes"):
        out.add_column(column, justify="left" if column == "graph" else "right", no_wrap=True)
    for batch in result.batches:
        rows = [row for row in result.rows if row.batch == batch and row.profile is not None]
        entries = [("static twin", rows[0].static_profile)] if rows else []
        for label, profile in entries + [(row.strategy, row.profile) for row in rows]:
            out.add_row(label, str(batch), *(f"{profile['categories'][c]:.2f}" for c in CATEGORIES),
                        f"{profile['total_ms']:.2f}", str(profile["nodes"]), end_section=label == rows[-1].strategy)
    return out


def _add_row(out: Table, label: str, stats, ratio: str, versus: list[str], style=None, end_section=False) -> None:
    memory = "" if stats.peak_memory_mb is None else f"{stats.peak_memory_mb:.0f}"
    out.add_row(label, str(stats.batch), f"{stats.p50_ms:.2f}", f"{stats.p90_ms:.2f}", f"{stats.p99_ms:.2f}",
                f"{stats.throughput:.1f}", ratio, *versus, memory, style=style, end_section=end_section)


def write_json(result, path: str | os.PathLike) -> Path:
    """The result as indented JSON, written atomically."""
    return atomic_write_bytes(path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())


def plot(result, path: str | os.PathLike) -> Path:
    """PNG: p50 latency against batch (every graph and the twin), and the dynamic/static ratio."""
    require("matplotlib", for_="bench --plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    latency, ratio = figure.subplots(1, 2)
    for strategy in dict.fromkeys(row.strategy for row in result.rows):
        rows = [row for row in result.rows if row.strategy == strategy]
        batches = [row.batch for row in rows]
        latency.plot(batches, [row.stats.p50_ms for row in rows], marker="o", label=strategy)
        ratio.plot(batches, [row.ratio for row in rows], marker="o", label=strategy)
    twin = [next(row.static for row in result.rows if row.batch == batch) for batch in result.batches]
    latency.plot(result.batches, [stats.p50_ms for stats in twin], marker="s", linestyle="--", color="black",
                 label="static twin")
    ratio.axhline(1.0, color="black", linestyle="--", linewidth=1)
    latency.set_yscale("log")
    for axes, label in ((latency, "p50 latency (ms)"), (ratio, "dynamic / static (p50)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(result.batches, labels=[str(batch) for batch in result.batches])
        axes.set_xlabel("batch size")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"{result.model} on {result.backend}")
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return atomic_write_bytes(path, buffer.getvalue())
