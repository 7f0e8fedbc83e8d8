"""Pass ``fold_batchnorm``: fold a per-channel affine right after a dynamic conv into its experts.

``y = s ⊙ DynamicConv2d(x) + t`` (an inference BatchNormalization with ``s = γ/√(σ²+ε)``,
``t = β − μ·s``, or the ``Mul(const)`` [+ ``Add(const)``] it may be exported as), where the
node's output feeds nothing else, becomes ``W'[k, m] = s_m·W[k, m]``, ``B'[k, m] = s_m·B[k, m]``
— exact for any attention because the contract is linear in W and B. The shift ``t`` can
join the expert biases (``B'[k, m] += t_m``) only when ``Σ_k A[n, k(, m)] = 1`` for every
sample, i.e. A comes from a Softmax over axis 1; otherwise (sigmoid routing, ...) it stays
after the node as one Add of a constant per-channel bias.
"""

from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.lower.graph import (ContractNode, constant_values, contract_nodes, detach_output, emitter_for,
                                       finish, load, producer, sole_consumer)

NAME = "fold-bn"


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every foldable per-channel affine after a contract node into the node's W and B.

    A graph with nothing to fold (e.g. one folded before) comes back as a plain copy, without the
    export and checks of a rewritten graph.
    """
    graph = load(model, NAME)
    affines = [(contract, _affine_after(graph, contract)) for contract in contract_nodes(graph, NAME)]
    if all(affine is None for _, affine in affines):
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(model)
        return unchanged
    for contract, affine in affines:
        if affine is not None:
            _fold(graph, contract, *affine)
    return finish(graph, model, NAME)


def _affine_after(graph: gs.Graph, contract: ContractNode) -> Optional[tuple]:
    """``(scale [M], shift [M] or None, last node)`` of the affine consuming Y, or None."""
    channels = contract.out_channels
    first = sole_consumer(contract.y, graph)
    if first is None:
        return None
    if first.op == "BatchNormalization" and len(first.outputs) == 1:
        stats = [constant_values(t) for t in first.inputs[1:5]]
        if any(v is None for v in stats):
            return None
        gamma, beta, mean, var = (v.astype(np.float64) for v in stats)
        scale = gamma / np.sqrt(var + first.attrs.get("epsilon", 1e-5))
        return scale, beta - mean * scale, first
    scale = _per_channel_operand(first, "Mul", contract.y, channels)
    if scale is None:
        return None
    add = sole_consumer(first.outputs[0], graph)
    shift = None if add is None else _per_channel_operand(add, "Add", first.outputs[0], channels)
    return (scale, None, first) if shift is None else (scale, shift, add)


def _per_channel_operand(node: gs.Node, op: str, data: gs.Tensor, channels: int) -> Optional[np.ndarray]:
    """The constant other operand of ``op(data, c)`` as a ``[channels]`` vector, if it is one per channel."""
    if node.op != op or len(node.inputs) != 2 or not any(t is data for t in node.inputs):
        return None
    other = node.inputs[1] if node.inputs[0] is data else node.inputs[0]
    values = constant_values(other)
    if values is None or values.ndim > 4:
        return None
    values = values.reshape((1,) * (4 - values.ndim) + values.shape)
    if values.shape[0] != 1 or values.shape[2:] != (1, 1) or values.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values[0, :, 0, 0], (channels,)).astype(np.float64)


def attention_sums_to_one(contract: ContractNode) -> bool:
    """True when A is a Softmax over the expert axis (axis 1), looking through Identity nodes."""
    node = producer(contract.attention)
    while node is not None and node.op == "Identity":
        node = producer(node.inputs[0])
    return node is not None and node.op == "Softmax" and node.attrs.get("axis", -1) % contract.attention_rank == 1


def _fold(graph: gs.Graph, contract: ContractNode, scale: np.ndarray, shift: Optional[np.ndarray],
          last: gs.Node) -> None:
    emit = emitter_for(graph, contract, NAME)
    output = detach_output(last)
    detach_output(contract.node)
    scale = scale.astype(contract.weight.dtype, copy=False)  # a float64 scale would double the folded weights
    shift = None if shift is None else shift.astype(contract.weight.dtype, copy=False)
    weight = contract.weight * scale[None, :, None, None, None]
    bias = None if contract.bias is None else contract.bias * scale
    separate_shift = shift is not None and not attention_sums_to_one(contract)
    if shift is not None and not separate_shift:
        bias = shift[None, :] if bias is None else bias + shift[None, :]
    inputs = list(contract.node.inputs) + [gs.Variable.empty()] * (4 - len(contract.node.inputs))
    inputs[2] = emit.const("weight", weight)
    if bias is not None:
        inputs[3] = emit.const("bias", np.broadcast_to(bias, (contract.experts, contract.out_channels)))
    contract.node.inputs.clear()
    contract.node.inputs.extend(inputs)
    contract.node.outputs.append(output if not separate_shift else gs.Variable(f"{emit.prefix}/scaled"))
    if separate_shift:
        emit.op("Add", [contract.node.outputs[0], emit.const("shift", shift.reshape(1, -1, 1, 1))], "shift", output)
