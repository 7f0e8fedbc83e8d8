"""Strategy ``static``: the static-conv baseline for latency comparisons — NOT numerically equivalent.

Each node becomes a plain Conv with the mean expert kernel ``mean_k W[k]`` (and mean bias):
the kernel the model would use with uniform attention, with the same shape, groups and
FLOPs as the dynamic conv's convolution. S is dropped, ODConv's input-channel and filter
scales (a Mul right before / after the node by a per-channel tensor computed by the
node's routing branch) are removed, and cleanup deletes the now-dead attention branch.
The result carries the metadata entry ``dyconv_deploy.numerically_equivalent = false``.
"""

import logging
import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.export.metadata import PREFIX, stamp
from dyconv_deploy.lower.graph import (ContractNode, ancestors, constant_values, contract_nodes, detach_output,
                                       emitter_for, finish, load, producer, sole_consumer)

NAME = "static"
EQUIVALENCE_KEY = PREFIX + "numerically_equivalent"
log = logging.getLogger(__name__)


def lower_static(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every contract node (and its attention scales) by a Conv with the mean expert kernel."""
    graph = load(model, NAME)
    for contract in contract_nodes(graph, NAME):
        _rewrite(graph, contract)
    lowered = stamp(finish(graph, model, NAME), numerically_equivalent="false")
    log.warning("lower[static]: the static baseline is NOT numerically equivalent to the dynamic model "
                "(mean expert kernels, attention removed); use it for latency comparisons only")
    return lowered


def _rewrite(graph: gs.Graph, contract: ContractNode) -> None:
    emit = emitter_for(graph, contract, NAME)
    routing = ancestors(contract.attention) | (ancestors(contract.spatial) if contract.spatial is not None else set())
    source = _unscaled_input(graph, contract, routing)
    output = detach_output(contract.node)
    filter_mul = sole_consumer(output, graph)
    if filter_mul is not None and _scales_by_attention(filter_mul, output, routing - ancestors(source)):
        output = detach_output(filter_mul)
    inputs = [source, emit.const("weight", contract.weight.mean(axis=0))]
    if contract.bias is not None:
        inputs.append(emit.const("bias", contract.bias.mean(axis=0)))
    emit.op("Conv", inputs, "conv", output, **contract.conv_attrs())


def _unscaled_input(graph: gs.Graph, contract: ContractNode, routing: set[int]) -> gs.Tensor:
    """``x0`` when the node's input is ``x0 · channel attention`` read by the node alone, else X."""
    mul = producer(contract.x)
    if mul is None or id(mul) in routing or sole_consumer(contract.x, graph) is not contract.node:
        return contract.x
    for data in mul.inputs:
        if _scales_by_attention(mul, data, routing - ancestors(data)):
            return data
    return contract.x


def _scales_by_attention(mul: gs.Node, data: gs.Tensor, routing: set[int]) -> bool:
    """True when ``mul`` is ``data · scale`` and ``scale`` is a computed ``[N, C, 1, 1]`` tensor that
    depends on ``routing`` (ids of routing-branch nodes that ``data`` itself does not depend on)."""
    if mul.op != "Mul" or len(mul.inputs) != 2 or not any(t is data for t in mul.inputs):
        return False
    scale = mul.inputs[1] if mul.inputs[0] is data else mul.inputs[0]
    per_channel = scale.shape is not None and len(scale.shape) == 4 and tuple(scale.shape[2:]) == (1, 1)
    return per_channel and constant_values(scale) is None and bool(ancestors(scale) & routing)
