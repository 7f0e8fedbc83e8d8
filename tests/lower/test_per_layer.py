"""``layer_graphs`` and ``lower_per_layer``: the lower-stage halves of ``--strategy auto``.

A mixed lowering (each layer its own strategy) must still be the model: it is compared with PyTorch at a
batch whose samples' attentions differ, and must fail with the attention rolled along the batch.
"""

import json

import numpy as np
import pytest
import torch
from graphs import NODES, assert_matches, contract_model, random_feeds, run_onnxruntime, run_reference
from guards import assert_attention_varies, assert_fails, rolled_attention
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata
from dyconv_deploy.inputs import random_images
from dyconv_deploy.lower import lower
from dyconv_deploy.lower.per_layer import LAYER_STRATEGIES, layer_graphs, layer_strategies, lower_per_layer
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, ODConv2d
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime
from dyconv_deploy.samples import calibrate_batch_norms
from dyconv_deploy.tolerance import TOLERANCES, compare

BATCH = 3
SHAPE = (BATCH, 8, 10, 10)


@pytest.fixture(scope="module")
def exported():
    """A model with two layers of the same geometry (one distinct layer graph for both) and four others."""
    torch.manual_seed(3)
    model = calibrate_batch_norms(nn.Sequential(
        DynamicConv2d(8, 8, 3, padding=1, temperature=1.0), nn.BatchNorm2d(8), nn.ReLU(),
        DynamicConv2d(8, 8, 3, padding=1, temperature=1.0), nn.BatchNorm2d(8), nn.ReLU(),
        DyNetConv2d(8, 8, 1),
        CondConv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False),
        ODConv2d(8, 8, 3, padding=1, groups=8),
    ), SHAPE)
    x = random_images(SHAPE)
    assert_attention_varies(model, x)
    with torch.no_grad():
        expected = model(x).numpy()
        with rolled_attention(model):
            rolled = model(x).numpy()
    return export_onnx(model, x), {"input": x.numpy()}, expected, rolled


def test_layer_graphs_share_a_geometry_and_cover_every_node(exported):
    proto = exported[0]
    graphs = layer_graphs(proto)
    assert [len(g.layers) for g in graphs] == [2, 1, 1, 1]
    assert graphs[0].label == "3x3 8->8 @10x10 K4"
    assert "g8" in graphs[-1].label and graphs[-1].label.endswith(" S")
    assert "per-channel A" in graphs[1].label
    names = [name for g in graphs for name in g.layers]
    assert len(set(names)) == 5
    for graph in graphs:
        assert [node.op_type for node in graph.model.graph.node] == ["DynamicConv2d"]
        assert [i.name for i in graph.model.graph.input][:2] == ["X", "A"]


def test_a_layer_graph_is_its_layer(exported):
    """The single-node graph, fed the inputs its layer sees in the model, gives that layer's output."""
    proto = exported[0]
    graph = layer_graphs(proto)[-1]  # ODConv depthwise: X, A and S
    feeds = random_feeds(graph.model, batch=2)
    feeds["A"] = np.abs(feeds["A"])
    (layer_out,) = run_reference(graph.model, feeds)
    expanded = run_onnxruntime(to_onnxruntime(graph.model), feeds)[0]
    assert layer_out.shape == (2, 8, 5, 5)
    assert_matches([expanded], [layer_out])


@pytest.mark.parametrize("rotation", range(len(LAYER_STRATEGIES)))
def test_mixed_lowering_matches_pytorch(exported, rotation):
    """Every layer a different strategy (rotated, so each layer takes each strategy once over the cases)."""
    proto, feeds, expected, rolled = exported
    names = [name for g in layer_graphs(proto) for name in g.layers]
    choices = {name: LAYER_STRATEGIES[(i + rotation) % len(LAYER_STRATEGIES)] for i, name in enumerate(names)}
    lowered = lower_per_layer(proto, choices, static_batch=BATCH)
    kept = _contract_nodes(lowered)
    assert len(kept) == list(choices.values()).count("plugin")
    assert all("plugin_version" in {a.name for a in node.attribute} for node in kept)  # tagged by the plugin pass
    (output,) = run_onnxruntime(to_onnxruntime(lowered), feeds)
    assert_matches([output], [expected])
    assert_fails(compare(output, rolled, TOLERANCES["fp32"]), "giving sample n sample n-1's attention")
    assert layer_strategies(lowered) == choices
    assert json.loads(read_metadata(lowered)["layer_strategies"]) == choices


def test_choices_must_fit_the_graph(exported):
    proto = exported[0]
    names = [name for g in layer_graphs(proto) for name in g.layers]
    with pytest.raises(DyconvError, match=r"no choice for \['" + names[0]):
        lower_per_layer(proto, {name: "plugin" for name in names[1:]})
    with pytest.raises(DyconvError, match="no such node: \\['ghost'\\]"):
        lower_per_layer(proto, {**{name: "plugin" for name in names}, "ghost": "plugin"})
    with pytest.raises(DyconvError, match="unknown layer strategy static"):
        lower_per_layer(proto, {name: "static" for name in names})
    with pytest.raises(DyconvError, match="dynamic batch"):
        lower_per_layer(proto, {name: "grouped" for name in names})


def test_single_strategy_graphs_record_no_layer_choices(exported):
    assert layer_strategies(lower(exported[0], "plugin")) == {}


@pytest.mark.parametrize("node", NODES, ids=str)
def test_layer_graph_of_every_contract_geometry(node):
    """Hand-built graphs (any conforming producer): one layer graph, the node's own inputs and attributes."""
    model = contract_model(node, affine="bn")
    (graph,) = layer_graphs(model)
    (single,) = graph.model.graph.node
    (original,) = _contract_nodes(lower(model, "plugin"))
    assert {a.name for a in single.attribute} <= {a.name for a in original.attribute}
    assert [i.name for i in graph.model.graph.input] == ["X", "A"] + (["S"] if node.spatial else [])
    assert graph.geometry["spatial"] == node.spatial and graph.geometry["group"] == node.groups


def _contract_nodes(model) -> list:
    return [node for node in model.graph.node if node.op_type == OP_TYPE and node.domain == DOMAIN]


def test_layers_that_differ_only_in_the_bias_get_their_own_layer_graph():
    """A bias-free layer timed with another layer's bias would time the wrong graph."""
    torch.manual_seed(0)
    model = nn.Sequential(DynamicConv2d(8, 8, 3, padding=1), nn.ReLU(),
                          DynamicConv2d(8, 8, 3, padding=1, bias=False)).eval()
    graphs = layer_graphs(export_onnx(model, random_images(SHAPE)))
    assert [(len(g.layers), g.geometry["bias"]) for g in graphs] == [(1, True), (1, False)]
    assert [len(g.model.graph.node[0].input) > 3 and g.model.graph.node[0].input[3] != "" for g in graphs] \
        == [True, False]
