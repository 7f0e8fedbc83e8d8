"""Strategy ``experts``: standard ops, dynamic batch, exact — run all K experts, then mix.

Each node becomes one Conv with K·M output channels (the expert biases as its bias) and a
weighted sum over K: ``Y[n,m] = sum_k A[n,k(,m)] · (conv(X, W[k]) + B[k])[n,m]``, which is
the contract because the conv is linear in its kernel. Cost: K× the conv FLOPs and a K×
larger intermediate. The Conv keeps the node's groups: its output channels are ordered
(group, expert, channel-in-group) so each conv group sees only its own experts.

A depthwise node (one input channel per group, no S) becomes K Convs instead, one per expert
with its constant ``W[k]`` and the node's groups, each scaled by its attention and summed:
``Y = Sum_k A[:, k(, :)] · (conv(X, W[k]) + B[k])``. The same math, but every Conv is a plain
depthwise one, which engines run on their fast constant-weight kernels (ONNX Runtime's NCHWc
depthwise path: 3–5x faster than a depthwise Conv with computed weights), where the single
K·M-channel grouped Conv has no such kernel.

Spatial attention S (ODConv) multiplies kernel tap p of every sample by ``S[n,p]``, which is
the same as scaling the input patch at tap p. So X is first unfolded by a fixed one-hot
depthwise Conv into ``[N, C·kH·kW, Ho, Wo]`` (channel c·P + p holds tap p of channel c, with
the node's strides, pads and dilations), scaled by S, and the expert Conv becomes 1x1 with
the same K·M·(C/G)·kH·kW MACs per output pixel. Extra cost: the unfold, C·(kH·kW)² MACs per
output pixel, and an intermediate kH·kW× the input channels at the output resolution.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.lower.graph import ContractNode, Emitter, contract_nodes, detach_output, emitter_for, finish, load

NAME = "experts"


def lower_experts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every contract node by an expert Conv and an attention-weighted sum."""
    graph = load(model, NAME)
    for contract in contract_nodes(graph, NAME):
        rewrite(graph, contract)
    return finish(graph, model, NAME)


def rewrite(graph: gs.Graph, contract: ContractNode) -> None:
    """Replace one contract node by its expert Conv(s) and the attention-weighted sum."""
    emit = emitter_for(graph, contract, NAME)
    if contract.spatial is None and contract.in_channels == contract.group:
        _per_expert_depthwise(emit, contract, detach_output(contract.node))
        return
    weight = group_major(contract.weight, contract.group)
    if contract.spatial is None:
        x, attrs = contract.x, contract.conv_attrs()
    else:
        x, attrs = _unfold_scaled(emit, contract), {"group": contract.group}
        weight = weight.reshape(weight.shape[0], -1, 1, 1)
    inputs = [x, emit.const("weight", weight)]
    if contract.bias is not None:
        inputs.append(emit.const("bias", group_major(contract.bias, contract.group)))
    per_expert = emit.op("Conv", inputs, "conv", **attrs)
    _mix(emit, contract, per_expert, detach_output(contract.node))


def _per_expert_depthwise(emit: Emitter, contract: ContractNode, output: gs.Variable) -> None:
    """``output = Sum_k conv(X, W[k], B[k]) · A[:, k]``: K depthwise Convs, each weighted by its expert's
    attention (``[N, 1, 1, 1]``, or ``[N, M, 1, 1]`` for a rank-3 A)."""
    experts = contract.experts
    attention = [contract.attention]
    if experts > 1:  # one [N, 1(, M)] tensor per expert
        attention = [gs.Variable(f"{emit.prefix}/attention_{k}") for k in range(experts)]
        emit.graph.nodes.append(gs.Node("Split", f"{emit.prefix}/attention_split", {"axis": 1},
                                        [contract.attention, emit.ints("split", [1] * experts)], attention))
    weighted = []
    for k, weight in enumerate(attention):
        inputs = [contract.x, emit.const(f"weight_{k}", contract.weight[k])]
        if contract.bias is not None:
            inputs.append(emit.const(f"bias_{k}", contract.bias[k]))
        conv = emit.op("Conv", inputs, f"conv_{k}", **contract.conv_attrs())
        scale = emit.reshape(weight, [0, -1, 1, 1], f"attention_{k}_nchw")
        weighted.append(emit.op("Mul", [conv, scale], f"weighted_{k}"))
    emit.op("Sum", weighted, "mixed", output)


def group_major(array: np.ndarray, groups: int) -> np.ndarray:
    """``[K, M, ...] -> [G·K·(M/G), ...]``: experts ordered inside each conv group."""
    experts, channels, rest = array.shape[0], array.shape[1], array.shape[2:]
    split = array.reshape(experts, groups, channels // groups, *rest)
    return np.swapaxes(split, 0, 1).reshape(experts * channels, *rest)


def _unfold_scaled(emit: Emitter, contract: ContractNode) -> gs.Variable:
    """``X [N, C, H, W] -> [N, C·P, Ho, Wo]``, tap p of channel c at c·P + p, scaled by ``S[n, p]``."""
    channels, (kh, kw) = contract.in_channels, contract.kernel_size
    taps = kh * kw
    one_hot = np.tile(np.eye(taps).reshape(taps, 1, kh, kw), (channels, 1, 1, 1))
    patches = emit.op("Conv", [contract.x, emit.const("taps", one_hot)], "unfold",
                      **contract.conv_attrs(group=channels))
    per_tap = emit.reshape(contract.spatial, [0, 1, taps], "spatial_row")
    tiled = emit.op("Expand", [per_tap, emit.ints("channels_taps", [1, channels, taps])], "spatial_tiled")
    scale = emit.reshape(tiled, [0, channels * taps, 1, 1], "spatial_scale")
    return emit.op("Mul", [patches, scale], "scaled_patches")


def _mix(emit: Emitter, contract: ContractNode, per_expert: gs.Variable, output: gs.Variable) -> None:
    """``[N, G·K·Mg, Ho, Wo]`` weighted by A and summed over K into ``output [N, M, Ho, Wo]``."""
    groups, experts = contract.group, contract.experts
    per_group = contract.out_channels // groups
    out_hw = emit.op("Slice", [emit.op("Shape", [per_expert], "shape"), emit.ints("hw_begin", [2]),
                               emit.ints("hw_end", [4])], "out_hw")
    split = emit.op("Concat", [emit.ints("split_head", [0, groups, experts, per_group]), out_hw],
                    "split_shape", axis=0)
    split_experts = emit.op("Reshape", [per_expert, split], "split")
    weighted = emit.op("Mul", [split_experts, _attention_weights(emit, contract)], "weighted")
    mixed = emit.op("ReduceSum", [weighted, emit.ints("expert_axis", [2])], "mixed", keepdims=0)
    merge = emit.op("Concat", [emit.ints("merge_head", [0, contract.out_channels]), out_hw], "merge_shape", axis=0)
    emit.op("Reshape", [mixed, merge], "merge", output)


def _attention_weights(emit: Emitter, contract: ContractNode) -> gs.Variable:
    """A as ``[N, 1, K, 1, 1, 1]`` (rank 2) or ``[N, G, K, M/G, 1, 1]`` (rank 3), to broadcast over the split."""
    groups, experts = contract.group, contract.experts
    per_group = contract.out_channels // groups
    if contract.attention_rank == 2:
        return emit.reshape(contract.attention, [0, 1, experts, 1, 1, 1], "attention")
    by_group = emit.reshape(contract.attention, [0, experts, groups, per_group], "attention_by_group")
    group_first = emit.op("Transpose", [by_group], "attention_group_first", perm=[0, 2, 1, 3])
    return emit.reshape(group_first, [0, groups, experts, per_group, 1, 1], "attention")
