"""``dyconv::DynamicConv2d`` on ONNX Runtime (CPU or CUDA) without a custom-op library.

ONNX Runtime has no kernel for the contract op, so :func:`to_onnxruntime` expands each node,
when a graph is loaded, into standard ops that keep the batch dynamic and the conv FLOPs at 1x::

    Wn = A @ W.reshape(K, -1)            [N, M*C/G*kH*kW]   (rank-3 A: sum_k A[n,k,m] W[k,m])
    Wn = Wn.reshape(N, M, C/G, kH, kW) * S[:, None, None]   (when S is given)
    Bn = A @ B                           [N, M]             (when B is given)
    Y  = Wn.reshape(N, G, M/G, C/G) @ X.reshape(N, G, C/G, H*W) (+ Bn)   (unpadded 1x1: one batched MatMul,
                                                                        X strided first)
    Y  = Scan over n: Conv(X[n:n+1], Wn[n], Bn[n], strides, pads, dilations, group)   (any other conv)

so the kernel aggregation is one MatMul for the whole batch and every convolution runs on
ONNX Runtime's own MatMul or Conv kernels. This was picked over onnxruntime-extensions'
Python custom ops (slower in an earlier measurement: every call crosses into Python) and a
C++ custom-op library (ONNX Runtime's C API headers ship in no PyPI package, so it cannot be
built from a clean clone). Usage::

    session = onnxruntime.InferenceSession(to_onnxruntime(model).SerializeToString())
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.onnx_file import check_and_infer
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.ops.onnx_schema import register_schema

_DEFAULTS = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}


def to_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose contract nodes are expanded into standard ops (see the module doc).

    Pure function; a graph without contract nodes comes back as a shape-inferred copy.
    Raises:
        DyconvError: a node's expert kernels W are not an initializer (their shape must be known).
    """
    register_schema()
    result = check_and_infer(model, check=False)  # a copy, with the attention ranks in value_info
    graph = result.graph
    kernels = {init.name: init for init in graph.initializer}
    nodes = [new for node in graph.node for new in (_expand(node, kernels, graph) if _is_contract(node) else [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _is_contract(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def _expand(node: onnx.NodeProto, kernels: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The standard-op replacement of one contract node (its constants go to ``graph``)."""
    x, attention, weight, bias, spatial = list(node.input) + [""] * (5 - len(node.input))
    if weight not in kernels:
        raise DyconvError(f"to_onnxruntime: node {node.name or node.output[0]!r}: the expert kernels {weight!r} "
                          "must be an initializer")
    k, m, c, kh, kw = kernels[weight].dims
    attrs = {**_DEFAULTS, **{a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _DEFAULTS}}
    prefix = f"{node.output[0]}__ort"
    nodes: list[onnx.NodeProto] = []

    def constant(label: str, values) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"{prefix}_{label}"))
        return f"{prefix}_{label}"

    def add(op_type: str, inputs: list[str], label: str, output: str = "", **kwargs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output or f"{prefix}_{label}"], **kwargs))
        return output or f"{prefix}_{label}"

    def mix(experts: str, label: str, flat_kernels: bool) -> str:
        """``sum_k A[n,k] E[k]`` (one MatMul) or, for rank-3 A, ``sum_k A[n,k,m] E[k,m(,q)]``.

        E is ``[K, P]`` (rank-2 A) or ``[K, M, Q]`` for kernels / ``[K, M]`` for biases (rank-3 A).
        """
        if not rank3:
            return add("MatMul", [attention, experts], label)
        weights = add("Unsqueeze", [attention, constant(f"{label}_axes", [3])], f"{label}_a") if flat_kernels \
            else attention
        return add("ReduceSum", [add("Mul", [weights, experts], f"{label}_terms"), constant(f"{label}_k", [1])],
                   label, keepdims=0)

    rank3 = _attention_rank(graph, attention) == 3
    flat = add("Reshape", [weight, constant("flat_shape", [k, m, -1] if rank3 else [k, -1])], "flat")
    mixed = mix(flat, "w", flat_kernels=True)
    per_sample = add("Reshape", [mixed, constant("kernel_shape", [-1, m, c, kh, kw])], "kernels")
    if spatial:
        per_sample = add("Mul", [per_sample, add("Unsqueeze", [spatial, constant("s_axes", [1, 2])], "s")],
                         "kernels_s")
    mixed_bias = mix(bias, "b", flat_kernels=False) if bias else ""
    if kh == kw == 1 and not any(attrs["pads"]):
        _pointwise_conv(x, per_sample, mixed_bias, node.output[0], attrs, m, c, add, constant)
        return nodes
    scan_inputs = [x, per_sample] + ([mixed_bias] if bias else [])
    body = _per_sample_conv(prefix, constant("n_axis", [0]), bool(bias), attrs, kernels[weight].data_type)
    nodes.append(helper.make_node("Scan", scan_inputs, list(node.output), name=f"{prefix}_scan", body=body,
                                  num_scan_inputs=len(scan_inputs)))
    return nodes


def _pointwise_conv(x: str, kernels: str, bias: str, output: str, attrs: dict, m: int, c: int, add, constant) -> None:
    """Unpadded 1x1 conv with per-sample kernels as one batched MatMul, no per-sample loop::

        Xs = X[:, :, ::sH, ::sW]                                                (strided only)
        Y  = Wn.reshape(N, G, M/G, C/G) @ Xs.reshape(N, G, C/G, Ho*Wo)  (+ Bn.reshape(N, G, M/G, 1))
        Y  = Y.reshape(N, M, Ho, Wo)                                            -> ``output``
    """
    groups, strides = int(attrs["group"]), list(attrs["strides"])
    if strides != [1, 1]:
        x = add("Slice", [x, constant("starts", [0, 0]), constant("ends", [2**62, 2**62]), constant("axes", [2, 3]),
                          constant("steps", strides)], "strided")
    w = add("Reshape", [kernels, constant("pw_w_shape", [0, groups, m // groups, c])], "pw_w")
    y = add("MatMul", [w, add("Reshape", [x, constant("pw_x_shape", [0, groups, c, -1])], "pw_x")], "pw_y")
    if bias:
        y = add("Add", [y, add("Reshape", [bias, constant("pw_b_shape", [0, groups, m // groups, 1])], "pw_b")],
                "pw_yb")
    shape = add("Concat", [add("Shape", [x], "pw_n", end=1), constant("pw_m", [m]),
                           add("Shape", [x], "pw_hw", start=2)], "pw_shape", axis=0)
    add("Reshape", [y, shape], "pw_out", output=output)


def _per_sample_conv(prefix: str, batch_axis: str, has_bias: bool, attrs: dict, dtype: int) -> onnx.GraphProto:
    """Scan body: ``x [C,H,W], w [M,C/G,kH,kW] (, b [M]) -> y [M,Ho,Wo]`` through one Conv."""
    names = [f"{prefix}_{n}" for n in ("x", "w", "b")][:2 + has_bias]
    y1, x1, y = f"{prefix}_y1", f"{prefix}_x1", f"{prefix}_y"
    nodes = [helper.make_node("Unsqueeze", [names[0], batch_axis], [x1]),
             helper.make_node("Conv", [x1, *names[1:]], [y1], strides=list(attrs["strides"]),
                              pads=list(attrs["pads"]), dilations=list(attrs["dilations"]),
                              group=int(attrs["group"])),
             helper.make_node("Squeeze", [y1, batch_axis], [y])]
    return helper.make_graph(nodes, f"{prefix}_body",
                             [helper.make_tensor_value_info(n, dtype, None) for n in names],
                             [helper.make_tensor_value_info(y, dtype, None)])


def _attention_rank(graph: onnx.GraphProto, attention: str) -> int:
    """2 or 3, from the attention's inferred type."""
    for info in [*graph.value_info, *graph.input]:
        if info.name == attention and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    raise DyconvError(f"to_onnxruntime: shape inference left the rank of attention {attention!r} unknown; "
                      "export the model with dyconv-deploy export so every tensor has a rank")
