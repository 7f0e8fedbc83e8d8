"""Provenance metadata survives a dynamo export, writing and every lowering; failed writes change nothing."""

import os

import onnx
import pytest
import torch
from layer_models import CONFIGS, input_shape, make_layer

from dyconv_deploy import __version__
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata, save_atomic, state_dict_sha256
from dyconv_deploy.export.settings import EXPORTER_OPSETS
from dyconv_deploy.lower import STRATEGIES, lower
from dyconv_deploy.trt.sidecar import atomic_write_bytes

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


def _write_model(path):
    save_atomic(onnx.ModelProto(ir_version=10), path)


def _write_bytes(path):
    atomic_write_bytes(path, b"new")


@pytest.mark.parametrize("write", [_write_model, _write_bytes], ids=["save_atomic", "atomic_write_bytes"])
def test_a_failed_write_keeps_the_existing_file_and_leaves_no_temporary(tmp_path, monkeypatch, write):
    target = tmp_path / "out"
    target.write_bytes(b"old")

    def fail(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write(target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
