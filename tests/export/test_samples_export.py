"""Every sample through the default exporter and every equivalent strategy, batch 1 and > 1; dynamo's graph.

The default exporter (``auto``) takes the TorchScript trace for every sample, and its graph must be
the one ``--exporter dynamo`` writes, node for node (checked for every sample but ``dy_resnet18`` and
``dy_mobilenetv2``): so dynamo's graph is verified too, without a second round of comparisons. The
samples' BatchNorms are calibrated (see :mod:`dyconv_deploy.samples`), so their outputs depend on the
input and a wrong graph cannot pass. The ImageNet-sized samples are marked ``slow`` (``-m "not slow"``
skips them); dynamo's export is most of their time.
"""

import pytest
import torch
from same_graph import assert_same_graph

from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.export.metadata import read_metadata
from dyconv_deploy.verify import verify_onnx
from dyconv_deploy.lower import lower
from dyconv_deploy.nn import DynamicConvBase
from dyconv_deploy.samples import create_sample, default_input_shape, list_samples
from dyconv_deploy.tolerance import TOLERANCES

BATCHES = (1, 3)
SAMPLES = [pytest.param(name, marks=[] if name == "tiny_dynamic" else [pytest.mark.slow])
           for name in list_samples() if not name.endswith("_static")]
# Compared with dynamo's graph (its export is most of these tests' time): every sample but the plain ResNet,
# whose ops (conv, BatchNorm, residual add, pooling) the others contain too, and DY-MobileNetV2, whose
# DynamicConv layers are in tiny_dynamic and whose MobileNetV2 body is odconv_mobilenetv2's; together ~55 s of CI.
DYNAMO_COMPARED = {name for name in list_samples() if not name.endswith("_static")} - {"dy_resnet18", "dy_mobilenetv2"}


def check_every_strategy(model, proto, shape):
    graphs = {strategy: lower(proto, strategy) for strategy in ("plugin", "experts")}  # export writes no raw graph
    for name, graph in graphs.items():
        for comparison in verify_onnx(model, graph, shape, BATCHES, TOLERANCES["fp32"]):
            assert comparison.passed, f"{name}: {comparison}"
    grouped = lower(proto, "grouped", static_batch=BATCHES[-1])
    for comparison in verify_onnx(model, grouped, shape, BATCHES[-1:], TOLERANCES["fp32"]):
        assert comparison.passed, f"grouped: {comparison}"
    assert contract_nodes(lower(proto, "static")) == []


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_exports_and_matches_with_every_strategy_and_dynamos_graph(name):
    model = create_sample(name)
    shape = default_input_shape(name)
    proto = export_onnx(model, torch.randn(*shape))
    assert read_metadata(proto)["exporter"] == "torchscript"
    dynamic_convs = [m for m in model.modules() if isinstance(m, DynamicConvBase)]
    assert len(contract_nodes(proto)) == len(dynamic_convs)
    check_every_strategy(model, proto, shape)
    if name in DYNAMO_COMPARED:
        assert_same_graph(proto, export_onnx(model, torch.randn(*shape), exporter="dynamo"))
