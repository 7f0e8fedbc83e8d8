"""Read an ONNX file a user names, with one-line errors for the ways it can be wrong.

Missing, empty, not ONNX at all (``onnx.load`` parses many byte strings into an empty model
without complaint), or with missing external data: each is a :class:`DyconvError` saying which.
"""

import os
from pathlib import Path

import onnx

from dyconv_deploy.errors import DyconvError


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """The model in ``path``, with its external data (from the model's folder) loaded."""
    file = Path(path)
    if not file.is_file():
        raise DyconvError(f"ONNX file not found: {path}")
    if file.stat().st_size == 0:
        raise DyconvError(f"ONNX file {path} is empty (0 bytes): was it written completely?")
    try:
        model = onnx.load(os.fspath(file))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DyconvError(f"cannot read {path} as ONNX: {reason}") from exc
    if not model.ir_version or not model.graph.node:
        raise DyconvError(f"{path} is not an ONNX model (no IR version or no graph nodes)")
    return model
