"""``plugin``: the contract node kept, tagged for TensorRT's ONNX parser, still exact on the reference."""

import numpy as np
import pytest
from graphs import NODES, batch_dim, contract_model, random_feeds, run_reference
from onnx import numpy_helper

from dyconv_deploy.lower.plugin import lower_plugin
from dyconv_deploy.ops.contract import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION


def _contract_node(model):
    (node,) = [n for n in model.graph.node if n.domain == DOMAIN]
    return node


@pytest.mark.parametrize("node", [n for n in NODES if n.spatial or not n.bias], ids=str)
def test_plugin_tags_the_node_and_leaves_the_parser_no_empty_input(node):
    model = contract_model(node)
    _contract_node(model).input.extend([""] * (5 - len(_contract_node(model).input)))  # trailing "" as well
    original = list(_contract_node(model).input)
    lowered = lower_plugin(model)
    tagged = _contract_node(lowered)
    attributes = {a.name: a.s.decode() for a in tagged.attribute if a.name.startswith("plugin_")}
    assert attributes == {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    # What TensorRT's parser hands addPluginV3: one tensor per input name, none of them null.
    assert all(tagged.input) and len(tagged.input) == (5 if node.spatial else 3 + node.bias)
    assert [b for a, b in zip(original, tagged.input) if a] == [a for a in original if a]
    if node.spatial and not node.bias:
        weights = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
        bias, kernels = weights[tagged.input[3]], weights[tagged.input[2]]
        assert bias.shape == kernels.shape[:2] and bias.dtype == kernels.dtype and not bias.any()
    assert batch_dim(lowered) == "batch"
    feeds = random_feeds(model, 2)
    np.testing.assert_array_equal(run_reference(lowered, feeds)[0], run_reference(model, feeds)[0])


def test_plugin_attributes_name_the_plugin_the_tensorrt_library_registers():
    """TensorRT's ONNX parser looks the plugin up by name, version and namespace: the C++ creator's must match."""
    import re
    from pathlib import Path

    from dyconv_deploy.ops.contract import PLUGIN_NAME

    source = (Path(__file__).resolve().parents[2] / "plugins" / "tensorrt" / "dynamicConvPlugin.cpp").read_text()
    constants = dict(re.findall(r'constexpr char const\* (kPlugin\w+) = "([^"]*)";', source))
    assert constants == {"kPluginName": PLUGIN_NAME, "kPluginVersion": PLUGIN_VERSION,
                         "kPluginNamespace": PLUGIN_NAMESPACE}
