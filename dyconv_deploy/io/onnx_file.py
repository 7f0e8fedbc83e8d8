"""Read an ONNX file a user names, with one-line errors for the ways it can be wrong.

Missing, empty, not ONNX at all (``onnx.load`` parses many byte strings into an empty model
without complaint), or with missing external data: each is a :class:`DyconvError` saying which.

Models over the protobuf limit (``onnx.checker.MAXIMUM_PROTOBUF``, 2 GiB, the one threshold, read
at call time) cannot be serialised in memory, so ``onnx.checker``, shape inference and ONNX
Runtime refuse them as protos: :func:`check_and_infer` and :func:`session_source` give them the
path-based APIs instead, on a temp copy whose tensors are external data.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.artifacts import save_onnx


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


def exceeds_protobuf_limit(model: onnx.ModelProto) -> bool:
    """Whether ``model`` serialises to more bytes than protobuf allows (``onnx.checker.MAXIMUM_PROTOBUF``)."""
    return model.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF


def check_and_infer(model: onnx.ModelProto, *, check: bool = True, full_check: bool = False,
                    **inference: bool) -> onnx.ModelProto:
    """``onnx.checker.check_model`` (unless ``check=False``), then shape inference; returns the inferred copy.

    ``inference``: ``check_type``, ``strict_mode``, ``data_prop`` of ``onnx.shape_inference.infer_shapes``.
    A model over the protobuf limit is checked with ``check_model(path)`` and ``infer_shapes_path`` on a
    temp copy (tensors as external data), and the inferred model comes back with its tensors loaded.
    Raises what the checker and shape inference raise.
    """
    if not exceeds_protobuf_limit(model):
        if check:
            onnx.checker.check_model(model, full_check=full_check)
        return onnx.shape_inference.infer_shapes(model, **inference)
    with _external_copy(model) as path:
        if check:
            onnx.checker.check_model(path, full_check=full_check)
        inferred = path.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(path, inferred, **inference)
        return onnx.load(inferred)  # the external data resolves from the temp folder


@contextmanager
def session_source(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What ``onnxruntime.InferenceSession`` takes for ``model``: its bytes, or over the protobuf limit
    the path of a temp copy with external data (valid inside the block; the session has read it by the end)."""
    if not exceeds_protobuf_limit(model):
        yield model.SerializeToString()
        return
    with _external_copy(model) as path:
        yield str(path)


@contextmanager
def _external_copy(model: onnx.ModelProto) -> Iterator[Path]:
    """``model.onnx`` in a temp folder, its tensors in an external data file beside it; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dyconv-large-") as folder:
        path = Path(folder) / "model.onnx"
        save_onnx(model, path, external_data_threshold=0)
        yield path
