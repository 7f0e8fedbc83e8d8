"""Strategy ``plugin`` (the default): keep each ``dyconv::DynamicConv2d`` node for the TensorRT plugin.

TensorRT's ONNX parser looks a plugin up by the node's op_type and its string attributes
``plugin_version`` and ``plugin_namespace``; this pass adds them. It also leaves the parser no
empty input to pass on: an absent ``""`` input becomes a null tensor in the parser, and
``addPluginV3`` documents no null inputs, so an absent ``B`` followed by a present ``S``
(ODConv without bias: ``[X, A, W, "", S]``) becomes a zero ``[K, M]`` initializer of W's dtype
(numerically the same; NVIDIA's importers build constants the same way) and trailing ``""``
inputs are dropped. The batch stays dynamic and the graph still runs on the CPU reference backend.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.lower.graph import ContractNode, contract_nodes, emitter_for, finish, load
from dyconv_deploy.ops.contract import PLUGIN_NAMESPACE, PLUGIN_VERSION

NAME = "plugin"
_BIAS = 3  # input index of B


def lower_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Tag every contract node with the TensorRT plugin attributes; no input of it is left empty."""
    graph = load(model, NAME)
    for contract in contract_nodes(graph, NAME):
        rewrite(graph, contract)
    return finish(graph, model, NAME)


def rewrite(graph: gs.Graph, contract: ContractNode) -> None:
    """Tag one contract node for the plugin and fill or drop its empty inputs (see the module doc)."""
    node = contract.node
    node.attrs.update(plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
    while not node.inputs[-1].name:
        node.inputs.pop()
    if len(node.inputs) > _BIAS and not node.inputs[_BIAS].name:
        zeros = np.zeros((contract.experts, contract.out_channels))
        node.inputs[_BIAS] = emitter_for(graph, contract, NAME).const("zero_bias", zeros)
