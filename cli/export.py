"""``dyconv-deploy export``: MODEL -> ONNX (one dyconv::DynamicConv2d per dynamic conv, or lowered), verified."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from dyconv_deploy.cli.hints import rerun_hints
from dyconv_deploy.cli.options import (AdapterOption, ArchOption, AtolOption, InputShapeOption, ModelArgument,
                                       RtolOption, TrustPickleOption, parse_batches, resolve_input_shape)
from dyconv_deploy.export.settings import (DEFAULT_BATCHES, DEFAULT_EXPORTER, DEFAULT_OPSET, EXPORT_STRATEGIES,
                                           EXPORT_TARGETS, EXPORTER_CHOICES, VERIFY_BACKENDS)
from dyconv_deploy.tolerance import TOLERANCES

_FP32 = TOLERANCES["fp32"]
_BATCHES = ",".join(map(str, DEFAULT_BATCHES))


def export_command(
    ctx: typer.Context,
    model: ModelArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.", show_default=False)],
    input_shape: InputShapeOption = "auto",
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch/--static-batch",
        help="Leave the batch free (named 'batch'), or fix it to the N of --input-shape.")] = True,
    strategy: Annotated[Literal[EXPORT_STRATEGIES], typer.Option(
        help="plugin: keep the custom node (TensorRT plugin); experts / grouped: standard ops only (grouped needs "
             "--static-batch); static: the static-conv baseline for latency comparisons; auto: per layer the "
             "fastest on --backend.")] = "plugin",
    exporter: Annotated[Literal[EXPORTER_CHOICES], typer.Option(
        help="torch.onnx exporter: auto (the TorchScript trace, a few times faster, when it cannot be wrong at "
             "another batch size, else dynamo; the same graph), dynamo (opsets 18-23) or torchscript (opsets "
             "17-20).")] = DEFAULT_EXPORTER,
    opset: Annotated[int, typer.Option(help="ONNX opset of the default domain.")] = DEFAULT_OPSET,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    adapter: AdapterOption = [],
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                         help="Compare the ONNX graph with PyTorch eager after writing it.")] = True,
    batch: Annotated[str, typer.Option(help="Batch sizes verified for a dynamic batch.")] = _BATCHES,
    atol: AtolOption = _FP32.atol,
    rtol: RtolOption = _FP32.rtol,
    backend: Annotated[str, typer.Option(
        help=f"Engine the verify stage runs the graph on, one of {', '.join(VERIFY_BACKENDS)} (auto: onnx.reference "
             "for a graph with custom nodes, else ONNX Runtime); --strategy auto times the layers on it too "
             "(auto: ort-cpu).")] = "auto",
    target: Annotated[Literal[EXPORT_TARGETS], typer.Option(
        "--for", help="any: the project's dyconv::DynamicConv2d nodes; ort-trt: the same nodes as "
                      "trt.plugins::DynamicConv2d, for ONNX Runtime's TensorRT provider (needs --strategy plugin; "
                      "verified as the plugin graph).")] = "any",
) -> None:
    """Export MODEL to ONNX with a free batch size, then prove it against PyTorch at two batch sizes.

    Each dynamic conv becomes one dyconv::DynamicConv2d node (attention branches stay plain ONNX ops).

    --strategy then lowers the graph. Prints a stage checklist and the max/mean error per output.

    Exits 1 when an output is over tolerance; the file is still written, for inspection.

    Examples:

        dyconv-deploy export sample:tiny_dynamic -o tiny.onnx

        dyconv-deploy export weights.pt --arch my_net.py:build -o net.onnx --input-shape 1x3x224x224

        dyconv-deploy export sample:dy_resnet18 -o r18.onnx --strategy grouped --static-batch --input-shape 8x3x224x224

        dyconv-deploy export sample:dy_resnet18 -o r18-ort-trt.onnx --for ort-trt

        dyconv-deploy export sample:dy_mobilenetv2 -o mnv2-openvino.onnx --strategy auto --backend openvino
    """
    from dyconv_deploy.tolerance import Tolerance
    from dyconv_deploy.workflow import export_model

    with rerun_hints(ctx):
        export_model(model, output, resolve_input_shape(model, input_shape), dynamic_batch=dynamic_batch,
                     strategy=strategy, exporter=exporter, opset=opset, arch=arch, trust_pickle=trust_pickle,
                     adapters=adapter, verify=verify, batches=parse_batches(batch), tolerance=Tolerance(atol, rtol),
                     target=target, backend=backend)
