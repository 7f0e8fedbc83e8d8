"""``lower()``: strategy dispatch, and every strategy on a model exported from ``dyconv_deploy.nn`` layers."""

import pytest
import torch
from graphs import assert_matches, op_types, run_onnxruntime, run_reference
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata
from dyconv_deploy.lower import STRATEGIES, lower
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, ODConv2d

BATCH = 2


def _every_family() -> nn.Module:
    """Softmax + BN (folds into B), sigmoid + BN (keeps an Add), ODConv full and depthwise, DyNet."""
    model = nn.Sequential(
        DynamicConv2d(3, 8, 3, padding=1, temperature=1.0), nn.BatchNorm2d(8), nn.ReLU(),
        CondConv2d(8, 8, 3, stride=2, padding=(1, 0, 0, 1), groups=2, bias=False), nn.BatchNorm2d(8),
        ODConv2d(8, 8, 3, padding=1), ODConv2d(8, 8, 3, padding=1, groups=8),
        DyNetConv2d(8, 6, 1),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = _every_family()
    x = torch.randn(BATCH, 3, 10, 10)
    with torch.no_grad():
        expected = model(x).numpy()
    return export_onnx(model, x), {"input": x.numpy()}, expected


@pytest.mark.parametrize("strategy", ["plugin", "experts", "grouped"])
def test_exact_strategies_match_pytorch(exported, strategy):
    proto, feeds, expected = exported
    lowered = lower(proto, strategy, static_batch=BATCH if strategy == "grouped" else None)
    run = run_reference if strategy == "plugin" else run_onnxruntime
    assert_matches(run(lowered, feeds), [expected])
    assert "BatchNormalization" not in op_types(lowered)
    assert read_metadata(lowered)["strategy"] == strategy


def test_static_removes_every_dynamic_part(exported):
    proto, feeds, expected = exported
    lowered = lower(proto, "static")
    assert op_types(lowered) == ["Conv", "Relu", "Conv", "Add", "Conv", "Conv", "Conv"]
    assert read_metadata(lowered)["numerically_equivalent"] == "false"
    assert run_onnxruntime(lowered, feeds)[0].shape == expected.shape


def test_unknown_strategy_lists_the_known_ones(exported):
    with pytest.raises(DyconvError, match="unknown lowering strategy 'fast'; choose one of: " + ", ".join(STRATEGIES)):
        lower(exported[0], "fast")
