"""``dyconv-deploy verify``: an ONNX file or TensorRT engine against its PyTorch model, per output and batch."""

from pathlib import Path
from typing import Annotated

import typer

from dyconv_deploy.cli.options import (ArchOption, AtolOption, ExpertDtypeOption, ModelArgument, PrecisionOption,
                                       RtolOption, TrustPickleOption, openvino_options, parse_batches)
from dyconv_deploy.export.settings import DEFAULT_BATCHES, VERIFY_BACKENDS
from dyconv_deploy.tolerance import TOLERANCES

_FP32 = TOLERANCES["fp32"]
_BATCHES = ",".join(map(str, DEFAULT_BATCHES))


def verify_command(
    model: ModelArgument,
    model_file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False,
                                               help="The exported model: an .onnx file or a TensorRT .engine/.plan.")],
    batch: Annotated[str, typer.Option(help="Batch sizes to run when the graph's batch is dynamic.")] = _BATCHES,
    backend: Annotated[str, typer.Option(
        help=f"One of {', '.join(VERIFY_BACKENDS)}. auto: trt for an engine, reference (onnx.reference) for a "
             "plugin graph, ort-cpu otherwise; ort-cpu on a plugin graph runs ONNX Runtime's expansion of "
             "the node; openvino runs it with the project's OpenVINO extension.")] = "auto",
    precision: PrecisionOption = "f32",
    expert_dtype: ExpertDtypeOption = "f32",
    atol: AtolOption = _FP32.atol,
    rtol: RtolOption = _FP32.rtol,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Run FILE and MODEL (PyTorch eager) on the same random inputs and compare every output.

    The input shape comes from FILE. Prints max/mean error per output; exits 1 when one is over tolerance.

    Examples:

        dyconv-deploy verify sample:tiny_dynamic tiny.onnx

        dyconv-deploy verify sample:tiny_dynamic tiny.onnx --backend ort-cpu --batch 1,8

        dyconv-deploy verify weights.pt net.onnx --arch my_net.py:build --batch 1,8 --atol 1e-3

        dyconv-deploy verify sample:tiny_dynamic tiny.onnx --backend openvino --expert-dtype bf16 --atol 5e-2

        dyconv-deploy verify sample:dy_mobilenetv2 model.engine --atol 1e-2 --rtol 1e-2
    """
    from dyconv_deploy.workflow import verify_model
    from dyconv_deploy.tolerance import Tolerance

    verify_model(model, model_file, batches=parse_batches(batch), tolerance=Tolerance(atol, rtol), backend=backend,
                 arch=arch, trust_pickle=trust_pickle,
                 runtime_options=openvino_options(backend, precision, expert_dtype))
