"""``lower()``: strategy dispatch, and every strategy on a model exported from ``dyconv_deploy.nn`` layers.

The comparisons can fail: the model is calibrated as the samples are, its input is ``random_images``, every
layer's attention varies across the batch and each strategy's output fails against the model with the
attention rolled along the batch (:mod:`guards`).
"""

import numpy as np
import pytest
import torch
from graphs import NODES, as_float16, assert_matches, contract_model, op_types, random_feeds, run_onnxruntime, \
    run_reference
from guards import assert_attention_varies, assert_depends_on_input, assert_fails, rolled_attention
from onnx import TensorProto
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata
from dyconv_deploy.inputs import random_images
from dyconv_deploy.lower import STRATEGIES, lower
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, ODConv2d
from dyconv_deploy.samples import calibrate_batch_norms
from dyconv_deploy.tolerance import TOLERANCES, compare

BATCH = 3
SHAPE = (BATCH, 3, 10, 10)


def _every_family() -> nn.Module:
    """Softmax + BN (folds into B), DyNet, sigmoid + BN (keeps an Add), ODConv full and depthwise; BatchNorms
    calibrated as the samples' (eval mode)."""
    model = nn.Sequential(
        DynamicConv2d(3, 8, 3, padding=1, temperature=1.0), nn.BatchNorm2d(8), nn.ReLU(),
        DyNetConv2d(8, 8, 1),  # early: at the end, after two ODConvs, its input hardly varies across the batch
        CondConv2d(8, 8, 3, stride=2, padding=(1, 0, 0, 1), groups=2, bias=False), nn.BatchNorm2d(8),
        ODConv2d(8, 8, 3, padding=1), ODConv2d(8, 8, 3, padding=1, groups=8),
    )
    return calibrate_batch_norms(model, SHAPE)


@pytest.fixture(scope="module")
def exported():
    """``(graph, feeds, expected output, expected output with the attention rolled along the batch)``."""
    torch.manual_seed(0)
    model = _every_family()
    x = random_images(SHAPE)
    assert_depends_on_input(model, x)
    assert_attention_varies(model, x)
    with torch.no_grad():
        expected = model(x).numpy()
        with rolled_attention(model):
            rolled = model(x).numpy()
    return export_onnx(model, x), {"input": x.numpy()}, expected, rolled


@pytest.mark.parametrize("strategy", ["plugin", "experts", "grouped"])
def test_exact_strategies_match_pytorch(exported, strategy):
    proto, feeds, expected, rolled = exported
    lowered = lower(proto, strategy, static_batch=BATCH if strategy == "grouped" else None)
    run = run_reference if strategy == "plugin" else run_onnxruntime
    (output,) = run(lowered, feeds)
    assert_matches([output], [expected])
    assert_fails(compare(output, rolled, TOLERANCES["fp32"]), "giving sample n sample n-1's attention")
    assert "BatchNormalization" not in op_types(lowered)
    assert read_metadata(lowered)["strategy"] == strategy


def test_static_removes_every_dynamic_part(exported):
    proto, feeds, expected, _ = exported
    lowered = lower(proto, "static")
    assert op_types(lowered) == ["Conv", "Relu", "Conv", "Conv", "Add", "Conv", "Conv"]
    assert read_metadata(lowered)["numerically_equivalent"] == "false"
    assert run_onnxruntime(lowered, feeds)[0].shape == expected.shape


def test_unknown_strategy_lists_the_known_ones(exported):
    with pytest.raises(DyconvError, match="unknown lowering strategy 'fast'; choose one of: " + ", ".join(STRATEGIES)):
        lower(exported[0], "fast")


@pytest.mark.parametrize("node", [NODES[3], NODES[5], NODES[9]], ids=str)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_float16_graph_lowers_to_float16_ops(node, strategy):
    """Every constant a pass adds (kernels, biases, folded BatchNorm, unfold taps, zero bias) is in W's dtype,
    and the exact strategies still match the contract's reference (fp16 tolerance, at a batch of 3)."""
    model = as_float16(contract_model(node, affine="bn"))
    lowered = lower(model, strategy, static_batch=BATCH if strategy == "grouped" else None)
    floats = {t.name: t.data_type for t in lowered.graph.initializer
              if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)}
    assert floats and set(floats.values()) == {TensorProto.FLOAT16}, floats
    feeds = {name: value.astype(np.float16) for name, value in random_feeds(model, BATCH).items()}
    outputs = (run_reference if strategy == "plugin" else run_onnxruntime)(lowered, feeds)
    assert outputs[0].dtype == np.float16 and outputs[0].shape[0] == BATCH
    if strategy != "static":
        result = compare(outputs[0], run_reference(model, feeds)[0], TOLERANCES["fp16"])
        assert result.passed, str(result)
