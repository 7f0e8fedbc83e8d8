"""Strategy ``grouped``: standard ops, static batch, exact — the batch folded into conv groups.

Per node (N the fixed batch, F = C/G·kH·kW)::

    kernels = A @ W.reshape(K, M·F)            [N, M·F]  (rank-3 A: [N, M, 1, K] @ [M, K, F])
    kernels *= S                               per tap, when S is present
    Y = Conv(X.reshape(1, N·C, H, W), kernels.reshape(N·M, C/G, kH, kW), (A @ B).reshape(N·M),
             group = G·N).reshape(N, M, Ho, Wo)

ONNX Conv takes a computed weight, but its ``group`` attribute (like TensorRT's) is fixed
when the graph is built, so N must be too: the pass fixes the graph's batch dimension.
"""

import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.lower.graph import (ContractNode, Emitter, contract_nodes, detach_output, emitter_for, finish, load,
                                       stage_error, with_static_batch)

NAME = "grouped"
STATIC_BATCH_REASON = ("ONNX and TensorRT convolution groups are static and this strategy folds the batch into "
                       "them (group = G·N), so the batch must be fixed")


def lower_grouped(model: onnx.ModelProto, static_batch: int | None = None) -> onnx.ModelProto:
    """Fold the batch into conv groups; ``static_batch`` fixes a dynamic batch first."""
    if static_batch is not None:
        model = with_static_batch(model, static_batch, NAME)
    graph = load(model, NAME)
    for contract in contract_nodes(graph, NAME):
        rewrite(graph, contract)
    return finish(graph, model, NAME)


def rewrite(graph: gs.Graph, contract: ContractNode) -> None:
    """Replace one contract node, whose input must have a static batch N, by the batch-folded grouped Conv.

    With a batch of 1 the fold is the identity: no Reshapes, so ORT can still fuse the Conv's activation.
    """
    batch = contract.x.shape[0] if contract.x.shape else None
    if not isinstance(batch, int):
        raise stage_error(NAME, 2, f"the input of node '{contract.node.name or contract.y.name}' has a dynamic "
                          f"batch ({batch!r}); {STATIC_BATCH_REASON}.",
                          "pass static_batch=N, or lower with strategy experts (or plugin) for a dynamic batch.")
    emit = emitter_for(graph, contract, NAME)
    output = detach_output(contract.node)
    folded_x = contract.x if batch == 1 else emit.reshape(contract.x, [1, batch * contract.in_channels, 0, 0],
                                                          "fold_batch")
    inputs = [folded_x, _kernels(emit, contract, batch)]
    if contract.bias is not None:
        inputs.append(_biases(emit, contract, batch))
    attrs = contract.conv_attrs(group=contract.group * batch)
    if batch == 1:
        emit.op("Conv", inputs, "conv", output, **attrs)
    else:
        y = emit.op("Conv", inputs, "conv", **attrs)
        emit.reshape(y, [batch, contract.out_channels, 0, 0], "unfold_batch", output)


def _kernels(emit: Emitter, contract: ContractNode, batch: int) -> gs.Variable:
    """Per-sample kernels as a Conv weight ``[N·M, C/G, kH, kW]``."""
    experts, channels = contract.experts, contract.out_channels
    kh, kw = contract.kernel_size
    per_filter = contract.weight[0, 0].size
    if contract.attention_rank == 2:
        flat = contract.weight.reshape(experts, channels * per_filter)
        kernels = emit.op("MatMul", [contract.attention, emit.const("experts", flat)], "kernels")
    else:
        rows = emit.op("Transpose", [contract.attention], "attention_t", perm=[0, 2, 1])
        rows = emit.reshape(rows, [0, channels, 1, experts], "attention_rows")
        by_channel = contract.weight.reshape(experts, channels, per_filter).transpose(1, 0, 2)
        kernels = emit.op("MatMul", [rows, emit.const("experts", by_channel)], "kernels")
    if contract.spatial is not None:
        by_tap = emit.reshape(kernels, [batch, -1, kh * kw], "kernels_by_tap")
        spatial = emit.reshape(contract.spatial, [batch, 1, kh * kw], "spatial_row")
        kernels = emit.op("Mul", [by_tap, spatial], "kernels_spatial")
    return emit.reshape(kernels, [batch * channels, contract.weight.shape[2], kh, kw], "kernels_folded")


def _biases(emit: Emitter, contract: ContractNode, batch: int) -> gs.Variable:
    """Per-sample biases as a Conv bias ``[N·M]``."""
    experts_bias = emit.const("expert_bias", contract.bias)
    if contract.attention_rank == 2:
        bias = emit.op("MatMul", [contract.attention, experts_bias], "bias")
    else:
        weighted = emit.op("Mul", [contract.attention, experts_bias], "bias_weighted")
        bias = emit.op("ReduceSum", [weighted, emit.ints("expert_axis", [1])], "bias", keepdims=0)
    return emit.reshape(bias, [batch * contract.out_channels], "bias_folded")
