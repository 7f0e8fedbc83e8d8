"""Arguments and options shared by the subcommands, as ``Annotated`` aliases.

A command declares ``model: ModelArgument`` or ``input_shape: InputShapeOption = "auto"``
and gets the same flag name, help text and parsing everywhere.
"""

from typing import Annotated, Optional

import typer

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime import EXPERT_DTYPES, OPENVINO_PRECISIONS

ModelArgument = Annotated[str, typer.Argument(
    metavar="MODEL", show_default=False,
    help="sample:NAME, path/to/file.py:factory or pkg.module:factory (the factory returns an nn.Module), "
         "or a checkpoint: model.pt2 (torch.export), weights.pt/.pth/.ckpt (state_dict, with --arch).")]

ArchOption = Annotated[Optional[str], typer.Option(
    "--arch", show_default=False,
    help="For a state_dict checkpoint: the model spec that builds its network (file.py:factory, sample:NAME).")]

TrustPickleOption = Annotated[bool, typer.Option(
    "--trust-pickle",
    help="Allow checkpoints that run code when loaded (a whole pickled module, TorchScript). Only for trusted "
         "files.")]

AtolOption = Annotated[float, typer.Option("--atol", help="Absolute tolerance of the comparison.")]
RtolOption = Annotated[float, typer.Option("--rtol", help="Relative tolerance of the comparison.")]

InputShapeOption = Annotated[str, typer.Option(
    "--input-shape",
    help="Input shape NxCxHxW, e.g. 1x3x224x224; 'auto' = the sample's own shape for sample:NAME, "
         "else 1x3x224x224.")]

PrecisionOption = Annotated[str, typer.Option(
    "--precision", help=f"openvino backend: inference precision, one of {', '.join(OPENVINO_PRECISIONS)} (bf16 needs a "
                        "CPU with bf16; the expert mixing stays fp32).")]

ExpertDtypeOption = Annotated[str, typer.Option(
    "--expert-dtype", help=f"openvino backend: storage of the expert kernels, one of {', '.join(EXPERT_DTYPES)} "
                           "(bf16/f16 halve the bytes the mixing reads; verify shows the accuracy cost).")]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

AdapterOption = Annotated[list[str], typer.Option(
    "--adapter", metavar="FILE.py:CLASS",
    help="A converter adapter for your own dynamic conv (repeatable); see README 'Bring your own model'.")]


def openvino_options(backend: str, precision: str, expert_dtype: str) -> dict:
    """The runtime options of ``--precision``/``--expert-dtype``; refused unless the backend is openvino."""
    if backend == "openvino":
        return {"precision": precision, "expert_dtype": expert_dtype}
    if (precision, expert_dtype) != ("f32", "f32"):
        raise DyconvError(f"--precision and --expert-dtype apply to --backend openvino only (got --backend {backend}); "
                          f"e.g. --backend openvino --precision {precision} --expert-dtype {expert_dtype}")
    return {}


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,4"`` -> ``(1, 4)``; anything else is a one-line :class:`DyconvError`."""
    try:
        batches = tuple(int(part) for part in text.split(","))
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise DyconvError(f"bad batch list {text!r}: expected positive integers joined by ',', e.g. 1,4")
    return batches


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> ``(1, 3, 224, 224)``; anything else (another rank too) is a one-line
    :class:`DyconvError`."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise DyconvError(f"bad input shape {text!r}: expected positive integers joined by 'x', e.g. 1x3x224x224")
    from dyconv_deploy.export.onnx_export import check_image_shape

    return check_image_shape(shape)  # the rank: N x C x H x W


def resolve_input_shape(model: str, text: str) -> tuple[int, ...]:
    """The shape ``--input-shape`` asks for; ``auto`` picks the sample's default or 1x3x224x224."""
    if text != "auto":
        return parse_shape(text)
    from dyconv_deploy.io import default_input_shape

    return default_input_shape(model)
