"""Every sample through both exporters, every equivalent strategy, batch 1 and > 1.

The samples' BatchNorms are calibrated (see :mod:`dyconv_deploy.samples`), so their outputs
depend on the input and a wrong graph cannot pass. The ImageNet-sized samples take about
two minutes together on two cores (marked ``slow``: ``-m "not slow"`` skips them).
"""

import pytest
import torch

from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.export.settings import EXPORTER_OPSETS
from dyconv_deploy.export.verify import verify_onnx
from dyconv_deploy.lower import lower
from dyconv_deploy.nn import DynamicConvBase
from dyconv_deploy.samples import create_sample, default_input_shape, list_samples
from dyconv_deploy.tolerance import TOLERANCES

BATCHES = (1, 3)
SAMPLES = [pytest.param(name, marks=[] if name == "tiny_dynamic" else [pytest.mark.slow])
           for name in list_samples() if not name.endswith("_static")]


def check_every_strategy(model, proto, shape):
    graphs = {strategy: lower(proto, strategy) for strategy in ("plugin", "experts")}
    graphs["raw export"] = proto
    for name, graph in graphs.items():
        for comparison in verify_onnx(model, graph, shape, BATCHES, TOLERANCES["fp32"]):
            assert comparison.passed, f"{name}: {comparison}"
    grouped = lower(proto, "grouped", static_batch=BATCHES[-1])
    for comparison in verify_onnx(model, grouped, shape, BATCHES[-1:], TOLERANCES["fp32"]):
        assert comparison.passed, f"grouped: {comparison}"
    assert contract_nodes(lower(proto, "static")) == []


@pytest.mark.parametrize("exporter", list(EXPORTER_OPSETS))
@pytest.mark.parametrize("name", SAMPLES)
def test_sample_exports_and_matches_with_every_strategy(name, exporter):
    model = create_sample(name)
    shape = default_input_shape(name)
    proto = export_onnx(model, torch.randn(*shape), exporter=exporter, opset=EXPORTER_OPSETS[exporter][0])
    dynamic_convs = [m for m in model.modules() if isinstance(m, DynamicConvBase)]
    assert len(contract_nodes(proto)) == len(dynamic_convs)
    check_every_strategy(model, proto, shape)
