"""Property: a random dynamic-conv layer computes the same function in eager PyTorch, in the contract op and
in every lowering on ONNX Runtime and ``onnx.reference``.

Each :func:`~fuzz_cases.fuzz_cases` example (square planes) builds the layer with ``make_layer`` and runs it
on ``random_images`` (samples differ, so do their attentions: :mod:`guards`). The expected output is the
naive per-sample loop in float64 on the layer's own routing. Against it: the layer, the batch-folded
reference and ``torch.ops.dyconv.dynamic_conv2d`` (``layer`` tolerance), and the layer's contract graph
(``tests/lower/graphs.py``, the layer's experts as its W and B, fed the logits of the layer's routing,
optionally followed by a BatchNormalization or Mul+Add that ``fold_batchnorm`` folds) lowered by every
strategy and run by ONNX Runtime (the plugin graph through the project's ORT expansion) and by
``onnx.reference`` (``fp32``). ``static`` is another function: the loop with uniform attention and no
spatial attention.
"""

import functools

import onnx
import torch
from graphs import contract_model, run_onnxruntime, run_reference
from guards import MIN_ATTENTION_STD, attention_spread, routed_through
from hypothesis import assume, given
from hypothesis import strategies as st
from layer_models import make_layer, static_by_construction
from onnx import numpy_helper

from dyconv_deploy.inputs import random_images
from dyconv_deploy.lower import STRATEGIES, fold_batchnorm, lower_experts, lower_grouped, lower_plugin, lower_static
from dyconv_deploy.nn import Routing
from dyconv_deploy.ops import dynamic_conv2d, dynamic_conv2d_reference, per_sample_dynamic_conv2d
from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime
from dyconv_deploy.tolerance import TOLERANCES, Comparison, compare
from fuzz_cases import FuzzCase, fuzz_cases

# What contract_model may put after the node, for fold_batchnorm: nothing, a BatchNormalization, Mul then Add.
AFFINES = ("", "bn", "mul_add")


def run_layer(case: FuzzCase, layer: torch.nn.Module, x: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, Routing]:
    """``(layer(x), the routing it used)``; with ``case.injects_spatial`` a random ``S [N, k, k]`` joins it."""
    spatial = (torch.sigmoid(torch.randn(case.batch, case.kernel, case.kernel, generator=generator))
               if case.injects_spatial else None)
    used = []

    def capture(path, routing):
        used.append(routing if spatial is None else routing._replace(spatial=spatial))
        return used[-1]

    with routed_through(layer, capture), torch.no_grad():
        y = layer(x)
    return y, used[0]


def conv_arguments(layer) -> dict:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}


def per_sample_loop(layer, x: torch.Tensor, attention, spatial) -> torch.Tensor:
    """The contract with one ``F.conv2d`` per sample, in float64 (no channel or filter scales)."""
    def double(t):
        return None if t is None else t.detach().double()

    return per_sample_dynamic_conv2d(double(x), double(attention), double(layer.weight), double(layer.bias),
                                     double(spatial), **conv_arguments(layer))


def contract_graph(case: FuzzCase, layer, affine: str) -> onnx.ModelProto:
    """``graphs.contract_model`` of the case's node (and ``affine`` after it) with the layer's experts."""
    model = contract_model(case.node(), affine=affine, seed=case.seed)
    parameters = {"W": layer.weight, "B": layer.bias}
    for initializer in model.graph.initializer:
        if initializer.name in parameters:
            values = parameters[initializer.name].detach().numpy()
            initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    return model


def per_channel_affine(model: onnx.ModelProto) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` ``[1, M, 1, 1]`` of the affine ``contract_model`` put after the node (1 and 0 if none)."""
    values = {i.name: torch.tensor(numpy_helper.to_array(i), dtype=torch.float64) for i in model.graph.initializer}
    if "gamma" in values:
        (bn,) = [node for node in model.graph.node if node.op_type == "BatchNormalization"]
        epsilon = next(a.f for a in bn.attribute if a.name == "epsilon")
        scale = values["gamma"] / torch.sqrt(values["var"] + epsilon)
        shift = values["beta"] - values["mean"] * scale
    elif "scale" in values:
        scale, shift = values["scale"], values["shift"]
    else:
        return torch.ones(()), torch.zeros(())
    return scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)


def graph_feeds(case: FuzzCase, x: torch.Tensor, routing: Routing) -> dict:
    """The contract graph's inputs: X, and the logits its Softmax / Sigmoid turns into the layer's routing."""
    def inverse_sigmoid(t):
        return torch.logit(t.double()).float().numpy()

    attention = routing.attention
    feeds = {"X": x.numpy(), "logits": (inverse_sigmoid(attention) if case.node().routing == "Sigmoid"
                                        else attention.double().log().float().numpy())}
    if routing.spatial is not None:
        feeds["spatial_logits"] = inverse_sigmoid(routing.spatial)
    return feeds


def lowered_graphs(case: FuzzCase, model: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """``{strategy: lowered model}`` for every strategy (``grouped`` at the case's batch), as ``lower`` does:
    the affine after the node folded first (once for all)."""
    folded = fold_batchnorm(model)
    graphs = {"plugin": lower_plugin(folded), "experts": lower_experts(folded),
              "grouped": lower_grouped(folded, static_batch=case.batch), "static": lower_static(folded)}
    assert set(graphs) == set(STRATEGIES), "a lowering strategy is not fuzzed"
    return graphs


def side_by_side(graphs: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """One model computing every graph, each graph's names (inputs and outputs too) prefixed ``<key>/``: one
    ONNX Runtime session and one ``onnx.reference`` evaluator per example instead of one per strategy."""
    prefixed = [onnx.compose.add_prefix(graph, f"{key}/") for key, graph in graphs.items()]
    return functools.reduce(lambda a, b: onnx.compose.merge_models(a, b, io_map=[]), prefixed)


def lowered_comparisons(case: FuzzCase, model: onnx.ModelProto, feeds: dict, expected: torch.Tensor,
                        static_expected: torch.Tensor) -> list[Comparison]:
    """Every lowering of the contract graph on ONNX Runtime and on ``onnx.reference`` against ``expected``
    (the graph's affine applied to it)."""
    scale, shift = per_channel_affine(model)
    expected, static_expected = expected * scale + shift, static_expected * scale + shift
    graphs = lowered_graphs(case, model)
    merged = side_by_side(graphs)
    inputs = {i.name for i in merged.graph.input}
    merged_feeds = {f"{key}/{name}": value for key in graphs for name, value in feeds.items()
                    if f"{key}/{name}" in inputs}
    outputs = [o.name.split("/")[0] for o in merged.graph.output]
    comparisons = []
    for runner, results in (("onnxruntime", run_onnxruntime(to_onnxruntime(merged), merged_feeds)),
                            ("onnx.reference", run_reference(merged, merged_feeds))):
        for strategy, result in zip(outputs, results, strict=True):
            target = static_expected if strategy == "static" else expected
            comparisons.append(compare(result, target, TOLERANCES["fp32"], name=f"{strategy} on {runner}"))
    return comparisons


@given(case=fuzz_cases(square=True), affine=st.sampled_from(AFFINES))
def test_layer_op_and_lowerings_agree(case: FuzzCase, affine: str):
    torch.manual_seed(case.seed)
    generator = torch.Generator().manual_seed(case.seed)
    layer = make_layer(case.family, case)
    x = random_images((case.batch, case.in_channels, case.h, case.w), generator)
    if case.batch > 1 and not static_by_construction(case.family, case):
        spread = attention_spread(layer, x)
        assume(bool(spread) and min(spread.values()) > MIN_ATTENTION_STD)  # else no batch mix-up could be detected

    y, routing = run_layer(case, layer, x, generator)
    x_conv = x if routing.channel is None else x * routing.channel[:, :, None, None]
    expected = per_sample_loop(layer, x_conv, routing.attention, routing.spatial)
    uniform = torch.full_like(routing.attention, 1 / case.num_kernels)
    static_expected = per_sample_loop(layer, x_conv, uniform, None)
    op_inputs = (x_conv, routing.attention, layer.weight, layer.bias, routing.spatial)
    with torch.no_grad():
        comparisons = [
            compare(y, expected if routing.filter is None else expected * routing.filter[:, :, None, None],
                    TOLERANCES["layer"], name="eager layer"),
            compare(dynamic_conv2d_reference(*op_inputs, **conv_arguments(layer)), expected, TOLERANCES["layer"],
                    name="reference op"),
            compare(dynamic_conv2d(*op_inputs, **conv_arguments(layer)), expected, TOLERANCES["layer"],
                    name="torch op"),
        ]
    comparisons += lowered_comparisons(case, contract_graph(case, layer, affine), graph_feeds(case, x_conv, routing),
                                       expected, static_expected)
    failed = [str(c) for c in comparisons if not c.passed]
    assert not failed, "; ".join(failed)
