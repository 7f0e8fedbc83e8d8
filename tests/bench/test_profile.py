"""``bench --profile``'s library part: ONNX nodes -> op categories, and per-category times on ORT / OpenVINO."""

import importlib.util

import numpy as np
import onnx
import pytest
import torch

from dyconv_deploy.bench.profile import CATEGORIES, Profile, categorize, node_key, profile_onnxruntime, profile_openvino
from dyconv_deploy.export import export_onnx
from dyconv_deploy.io.model_spec import default_input_shape, load_model
from dyconv_deploy.lower import lower
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime

TINY = "sample:tiny_dynamic"
DYNAMIC = ("plugin", "experts", "grouped")
ITERATIONS = 3


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    shape = default_input_shape(TINY)
    raw = export_onnx(load_model(TINY), torch.randn(1, *shape[1:]))
    graphs = {s: lower(raw, s, static_batch=1 if s == "grouped" else None) for s in (*DYNAMIC, "static")}
    graphs["raw"] = raw
    return graphs


@pytest.fixture(scope="module")
def feeds():
    shape = default_input_shape(TINY)
    return {"input": np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32)}


def _by_name(model):
    return {node_key(n): n for n in model.graph.node}


def _attention_producers(model):
    """Producers of each contract node's A (input 1) and S (input 4)."""
    made_by = {o: node_key(n) for n in model.graph.node for o in n.output}
    return [[made_by[n.input[i]] for i in (1, 4) if i < len(n.input) and n.input[i]]
            for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


@pytest.mark.parametrize("strategy", [*DYNAMIC, "static", "ort-expanded"])
def test_every_node_gets_a_category(graphs, strategy):
    model = to_onnxruntime(graphs["plugin"]) if strategy == "ort-expanded" else graphs[strategy]
    categories = categorize(model)
    assert set(categories) == {node_key(n) for n in model.graph.node}
    assert set(categories.values()) <= set(CATEGORIES)
    present = set(categories.values())
    if strategy == "static":
        assert present == {"convolution", "other"}  # no attention branch, no experts
    else:
        assert "attention" in present and "convolution" in present
        assert ("mixing" in present) == (strategy != "plugin")  # the contract node mixes inside itself


def test_plugin_graph_attention_is_the_branch_feeding_a_and_s(graphs):
    model = graphs["plugin"]
    categories, nodes = categorize(model), _by_name(model)
    producers = _attention_producers(model)
    assert len(producers) == 4 and all(categories[p] == "attention" for ps in producers for p in ps)
    attention_ops = {nodes[k].op_type for k, c in categories.items() if c == "attention"}
    assert {"ReduceMean", "Gemm", "Softmax", "Sigmoid"} <= attention_ops
    for node in model.graph.node:  # the main-path tensor the pooling reads (X) is not attention
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            x_producer = next(n for n in model.graph.node if node.input[0] in n.output)
            assert categories[node_key(x_producer)] != "attention"
            assert categories[node_key(node)] == "convolution"
    first_conv = model.graph.node[0]
    assert first_conv.op_type == "Conv" and categories[node_key(first_conv)] == "convolution"


@pytest.mark.parametrize("strategy", DYNAMIC)
def test_the_same_attention_nodes_in_every_lowering(graphs, strategy):
    """The lowerings keep the original node names, so the plugin graph's attention nodes stay attention."""
    plugin = categorize(graphs["plugin"])
    lowered = categorize(to_onnxruntime(graphs[strategy]) if strategy == "plugin" else graphs[strategy])
    attention = {k for k, c in plugin.items() if c == "attention"}
    assert attention and all(lowered[k] == "attention" for k in attention)


def test_mixing_combines_attention_with_the_experts(graphs):
    grouped = graphs["grouped"]
    categories, nodes = categorize(grouped), _by_name(grouped)
    mixing = {k for k, c in categories.items() if c == "mixing"}
    matmuls = [k for k in mixing if nodes[k].op_type == "MatMul"]
    assert len([k for k in matmuls if k.endswith("/kernels")]) == 4  # A @ W, one per dynamic conv
    experts = categorize(graphs["experts"])
    # one weighted sum per dynamic conv: a ReduceSum over the split, or a Sum of K scaled depthwise convs
    assert sum(k.endswith("/experts/mixed") and c == "mixing" for k, c in experts.items()) == 4
    terms = [k for k in experts if "/experts/weighted_" in k]
    assert terms and all(experts[k] == "mixing" for k in terms)  # the depthwise node's K scaled terms
    assert all(c == "convolution" for k, c in experts.items() if k.endswith("/experts/conv"))
    expanded = to_onnxruntime(graphs["plugin"])
    ort_categories = categorize(expanded)
    assert all(ort_categories[node_key(n)] == "convolution" for n in expanded.graph.node if n.op_type == "Scan")


def _check(profile: Profile, dynamic: bool):
    assert set(profile.categories) == set(CATEGORIES) and profile.nodes > 0
    assert sum(profile.categories.values()) == pytest.approx(profile.total_ms, rel=1e-6)
    assert profile.total_ms > 0 and profile.categories["convolution"] > 0
    if dynamic:
        assert profile.categories["attention"] > 0 and profile.categories["mixing"] > 0
    else:
        assert profile.categories["attention"] == profile.categories["mixing"] == 0
    assert set(profile.to_dict()) == {"categories", "total_ms", "nodes"}


@pytest.mark.parametrize("strategy", [*DYNAMIC, "static"])
def test_profile_onnxruntime(graphs, feeds, strategy, tmp_path):
    model = graphs[strategy]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    profile = profile_onnxruntime(path if strategy == "plugin" else model, feeds, ITERATIONS, threads=1)
    _check(profile, dynamic=strategy != "static")
    assert not list(tmp_path.glob("onnxruntime_profile*")) and not list(_cwd_traces())


def _cwd_traces():
    from pathlib import Path

    return Path.cwd().glob("onnxruntime_profile*.json")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the openvino wheel")
@pytest.mark.parametrize("strategy", ["plugin", "static"])
def test_profile_openvino(graphs, feeds, strategy):
    from dyconv_deploy.runtime.openvino_runtime import OpenVinoRuntime

    model = graphs[strategy]
    runtime = OpenVinoRuntime(model, profile=True)
    try:
        profile = profile_openvino(runtime, feeds, model, ITERATIONS)
    finally:
        runtime.close()
    _check(profile, dynamic=strategy == "plugin")
