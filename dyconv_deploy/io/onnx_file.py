"""Read an ONNX file a user names, with one-line errors for the ways it can be wrong.

Missing, empty, not ONNX at all (``onnx.load`` parses many byte strings into an empty model
without complaint), or with missing external data: each is a :class:`DyconvError` saying which.

Models over the protobuf limit (``onnx.checker.MAXIMUM_PROTOBUF``, 2 GiB, the one threshold, read
at call time) cannot be serialised in memory, so ``onnx.checker``, shape inference and ONNX
Runtime refuse them as protos: :func:`session_source` gives them the path-based API instead, on a
temp copy whose tensors are external data; :func:`check_and_infer` never serialises the weights.
"""

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import Message

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
    Both run on a copy whose initializers above :data:`WEIGHT_ELEMENTS` elements are typed graph inputs
    (:func:`_weightless`): the same names, types and shapes, without serialising the weights twice per call
    (most of a ResNet-18's lowering time otherwise); small initializers stay, so shape tensors, Resize
    scales and the like still propagate. A copy still over the protobuf limit (huge ``Constant`` nodes) is
    checked with ``check_model(path)`` and ``infer_shapes_path`` on a temp copy (tensors as external data).
    Raises what the checker and shape inference raise.
    """
    light = _weightless(model)
    if exceeds_protobuf_limit(light):
        with _external_copy(model) as path:
            if check:
                onnx.checker.check_model(path, full_check=full_check)
            inferred = path.with_name("inferred.onnx")
            onnx.shape_inference.infer_shapes_path(path, inferred, **inference)
            return onnx.load(inferred)  # the external data resolves from the temp folder
    if check:
        onnx.checker.check_model(light, full_check=full_check)
    result = onnx.shape_inference.infer_shapes(light, **inference)
    del result.graph.input[len(model.graph.input):]  # the weights' stand-in inputs
    del result.graph.initializer[:]
    _extend(result.graph.initializer, model.graph.initializer)
    return result


WEIGHT_ELEMENTS = 1024


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers with more than :data:`WEIGHT_ELEMENTS` elements are graph inputs
    of their type and shape instead, appended after the model's own inputs (an initializer that is already
    a graph input is only dropped)."""
    light = _copy_except(model, onnx.ModelProto(), "graph")
    _copy_except(model.graph, light.graph, "initializer")
    inputs = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= WEIGHT_ELEMENTS:
            light.graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in inputs:
            light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light


def _extend(repeated, values) -> None:
    """``repeated.extend(values)``, for messages by ``add().CopyFrom`` (20x faster on large tensors with upb)."""
    if values and isinstance(values[0], Message):
        for value in values:
            repeated.add().CopyFrom(value)
    else:
        repeated.extend(values)


def _copy_except(source, target, skipped: str):
    """``target`` with every set field of the protobuf message ``source`` but ``skipped`` copied in; returns it."""
    for field, value in source.ListFields():
        if field.name == skipped:
            continue
        if field.is_repeated:
            _extend(getattr(target, field.name), value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return target


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
