"""Provenance metadata survives a dynamo export, writing and every lowering."""

import onnx
import pytest
import torch
from layer_models import CONFIGS, input_shape, make_layer

from dyconv_deploy import __version__
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata, state_dict_sha256
from dyconv_deploy.export.settings import EXPORTER_OPSETS
from dyconv_deploy.lower import STRATEGIES, lower

OPSET = EXPORTER_OPSETS["dynamo"][0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CondConv layer exported with dynamo and written, and its expected provenance."""
    layer = make_layer("condconv", CONFIGS[1])
    path = tmp_path_factory.mktemp("metadata") / "layer.onnx"
    export_onnx(layer, torch.randn(*input_shape(CONFIGS[1])), path, exporter="dynamo", opset=OPSET)
    provenance = {"version": __version__, "strategy": "plugin", "opset": str(OPSET), "exporter": "dynamo",
                  "source_sha256": state_dict_sha256(layer)}
    return onnx.load(str(path)), provenance


def test_dynamo_export_records_its_provenance(exported):
    model, provenance = exported
    assert read_metadata(model) == provenance


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lowering_keeps_the_provenance(exported, strategy):
    model, provenance = exported
    lowered = lower(model, strategy, static_batch=2 if strategy == "grouped" else None)
    expected = {**provenance, "strategy": strategy}
    if strategy == "static":
        expected["numerically_equivalent"] = "false"
    assert read_metadata(lowered) == expected


def _holder(**buffers) -> torch.nn.Module:
    module = torch.nn.Module()
    for name, value in buffers.items():
        module.register_buffer(name, value)
    return module


def test_the_source_hash_covers_each_tensors_shape_and_dtype():
    """The same bytes under the same name are other weights when the shape or the dtype differs."""
    values = torch.arange(6, dtype=torch.float32)
    digest = state_dict_sha256(_holder(w=values.reshape(2, 3)))
    assert state_dict_sha256(_holder(w=values.reshape(2, 3).clone())) == digest
    assert state_dict_sha256(_holder(w=values.reshape(3, 2))) != digest
    assert state_dict_sha256(_holder(w=values.reshape(2, 3).view(torch.int32))) != digest
    assert state_dict_sha256(_holder(w=values.reshape(2, 3) + 1)) != digest
