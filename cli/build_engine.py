"""``dyconv-deploy build-engine``: ONNX -> TensorRT engine plus its JSON sidecar."""

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_TIMING_CACHE = "~/.cache/dyconv-deploy/timing.cache"


def build_engine_command(
    onnx_file: Annotated[Path, typer.Argument(metavar="ONNX", show_default=False,
                                              help="The model to build (e.g. from `dyconv-deploy export`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine file to write; the sidecar is OUTPUT.json.")]
    = Path("model.engine"),
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 kernels: the ONNX is converted to fp16 (I/O and "
                                                      "attention kept fp32) for a strongly typed network.")]
    = False,
    min_batch: Annotated[int, typer.Option("--min-batch", help="Smallest batch of the optimisation profile.")] = 1,
    opt_batch: Annotated[int, typer.Option("--opt-batch", help="Batch TensorRT tunes for.")] = 8,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch of the optimisation profile.")] = 32,
    shapes: Annotated[Optional[list[str]], typer.Option(
        "--shapes", show_default=False,
        help="NAME:MIN,OPT,MAX with dims like 1x3x224x224 (or NAME:DIMS for a fixed shape); repeat per input. "
             "Overrides the batch range for that input.")] = None,
    workspace: Annotated[int, typer.Option("--workspace", help="Workspace memory limit in MiB.")] = 1024,
    timing_cache: Annotated[Path, typer.Option("--timing-cache", help="Timing cache, read when present and "
                                                                      "rewritten; reused across builds.")]
    = Path(DEFAULT_TIMING_CACHE),
    plugin: Annotated[Optional[Path], typer.Option(
        "--plugin", show_default=False,
        help="DynamicConv2d TensorRT plugin library, loaded before parsing; its sha256 goes into the sidecar and "
             "the runtime loads it again. Default for graphs with DynamicConv2d nodes: $DYCONV_PLUGIN_LIBRARY, else "
             "plugins/build/libdyconv_trt_plugin.so (dyconv-deploy build-plugin).")] = None,
    embed_plugin: Annotated[bool, typer.Option(
        "--embed-plugin", help="Serialise the plugin library into the plan: a version-compatible engine "
                               "(VERSION_COMPATIBLE, EXCLUDE_LEAN_RUNTIME) that loads without the library file.")]
    = False,
) -> None:
    r"""Build a TensorRT engine from ONNX and write OUTPUT plus the sidecar OUTPUT.json.

    The sidecar records the TensorRT version, GPU and compute capability, plugin and ONNX
    sha256, profiles and precision; loading the engine checks it first. Needs TensorRT 10 or
    11 and a CUDA GPU (pip install 'dyconv-deploy\[trt]').

    Examples:

        dyconv-deploy build-engine model.plugin.onnx -o model.engine --plugin build/libdyconv_trt_plugin.so

        dyconv-deploy build-engine model.experts.onnx -o model.engine --fp16 --min-batch 1 --opt-batch 8 --max-batch 64

        dyconv-deploy build-engine model.onnx --shapes input:1x3x160x160,8x3x224x224,16x3x320x320
    """
    from dyconv_deploy.trt.build import build_engine, parse_shapes
    from dyconv_deploy.trt.sidecar import read_sidecar

    ranges = parse_shapes(shapes or [])
    engine = build_engine(onnx_file, output, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                          shapes=ranges, fp16=fp16, workspace_mb=workspace,
                          timing_cache=timing_cache.expanduser(), plugin_library=plugin, embed_plugin=embed_plugin)
    typer.echo(f"wrote {engine} and {engine}.json")
    tactics = (read_sidecar(engine) or {}).get("plugin_tactics")
    if tactics:
        counts = Counter(t["algo"] or f"tactic {t['tactic']}" for t in tactics)
        typer.echo("TensorRT picked for the plugin layers: "
                   + ", ".join(f"{name} x{count}" for name, count in counts.most_common()))
