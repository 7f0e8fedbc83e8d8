"""Provenance of an exported graph (``metadata_props``); :func:`save_atomic` writes the graph.

Keys: ``dyconv_deploy.version``, ``dyconv_deploy.strategy``, ``dyconv_deploy.opset``,
``dyconv_deploy.exporter`` and ``dyconv_deploy.source_sha256`` (sha256 of the model's
state_dict: names, dtypes, shapes and bytes, in key order).
"""

import hashlib

import onnx
import torch
from torch import nn

from dyconv_deploy.io.artifacts import save_onnx as save_atomic  # noqa: F401  (atomic, see io.artifacts)

PREFIX = "dyconv_deploy."


def state_dict_sha256(model: nn.Module) -> str:
    """Hex sha256 identifying the weights and buffers of ``model``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stamp(model: onnx.ModelProto, **fields: object) -> onnx.ModelProto:
    """Set ``dyconv_deploy.<field>`` metadata entries (replacing earlier values); returns ``model``."""
    keys = {PREFIX + name for name in fields}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    for key, value in kept + [(PREFIX + name, str(value)) for name, value in fields.items()]:
        model.metadata_props.add(key=key, value=value)
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``dyconv_deploy.*`` entries of ``model``, without the prefix."""
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
