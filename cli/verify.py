"""``dyconv-deploy verify``: an ONNX file against its PyTorch model, per output and batch size."""

from pathlib import Path
from typing import Annotated

import typer

from dyconv_deploy.cli.options import ArchOption, AtolOption, ModelArgument, RtolOption, TrustPickleOption
from dyconv_deploy.export.settings import DEFAULT_BATCHES
from dyconv_deploy.tolerance import TOLERANCES

_FP32 = TOLERANCES["fp32"]
_BATCHES = ",".join(map(str, DEFAULT_BATCHES))


def verify_command(
    model: ModelArgument,
    onnx_file: Annotated[Path, typer.Argument(metavar="ONNX", help="The exported model.", show_default=False)],
    batch: Annotated[str, typer.Option(help="Batch sizes to run when the graph's batch is dynamic.")] = _BATCHES,
    atol: AtolOption = _FP32.atol,
    rtol: RtolOption = _FP32.rtol,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Run ONNX and MODEL (PyTorch eager) on the same random inputs and compare every output.

    Standard-op graphs run on ONNX Runtime (CPU); graphs with dyconv::DynamicConv2d on onnx.reference.

    The input shape comes from the graph. Prints max/mean error per output; exits 1 when one is over tolerance.

    Examples:

        dyconv-deploy verify sample:tiny_dynamic tiny.onnx

        dyconv-deploy verify weights.pt net.onnx --arch my_net.py:build --batch 1,8 --atol 1e-3
    """
    from dyconv_deploy.export.pipeline import parse_batches, verify_model
    from dyconv_deploy.tolerance import Tolerance

    verify_model(model, onnx_file, batches=parse_batches(batch), tolerance=Tolerance(atol, rtol), arch=arch,
                 trust_pickle=trust_pickle)
