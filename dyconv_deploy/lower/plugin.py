"""Strategy ``plugin`` (the default): keep each ``dyconv::DynamicConv2d`` node for the TensorRT plugin.

TensorRT's ONNX parser looks a plugin up by the node's op_type and its string attributes
``plugin_version`` and ``plugin_namespace``; this pass adds them and changes nothing else
(inputs keep their order, absent optional inputs stay ""), so the batch stays dynamic and
the graph still runs on the CPU reference backend.
"""

import onnx

from dyconv_deploy.lower.graph import contract_nodes, finish, load
from dyconv_deploy.ops.contract import PLUGIN_NAMESPACE, PLUGIN_VERSION

NAME = "plugin"


def lower_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Tag every contract node with the TensorRT plugin attributes."""
    graph = load(model, NAME)
    for contract in contract_nodes(graph, NAME):
        contract.node.attrs.update(plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
    return finish(graph, model, NAME)
