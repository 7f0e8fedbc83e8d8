"""``export_onnx`` on single layers: graph structure, the exporters, dynamic batch, every strategy, metadata.

The comparisons can fail: on verify's inputs every layer's attention varies across the batch, and giving
sample n sample n-1's attention fails verification (:mod:`guards`).
"""

import numpy as np
import onnx
import pytest
import torch
from guards import assert_attention_varies, assert_fails, rolled_attention
from layer_models import CONFIGS, FAMILIES, input_shape, make_layer, static_by_construction
from same_graph import assert_same_graph

from dyconv_deploy import __version__
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import ExportError, check_model, contract_nodes, export_onnx
from dyconv_deploy.export.metadata import read_metadata, state_dict_sha256
from dyconv_deploy.export.settings import EXPORTER_OPSETS, STRATEGIES
from dyconv_deploy.verify import verify_inputs, verify_onnx
from dyconv_deploy.lower import STRATEGIES as LOWERING_STRATEGIES
from dyconv_deploy.lower import lower
from dyconv_deploy.nn import DyReLU, ODConv2d
from dyconv_deploy.tolerance import TOLERANCES

BATCHES = (1, 3)
# torch.export takes ~2 s per model on 2 cores: dynamo gets one geometry per family (K=4 without bias; stride 2
# with asymmetric padding, groups and K=8; dilated depthwise; dilated groups), TorchScript the whole cross product.
DYNAMO_CASES = list(zip(FAMILIES, [CONFIGS[1], CONFIGS[2], CONFIGS[3], CONFIGS[6]]))
CASES = ([pytest.param(f, c, "dynamo", id=f"{f}-{c.name}-dynamo") for f, c in DYNAMO_CASES]
         + [pytest.param(f, c, "torchscript", id=f"{f}-{c.name}-torchscript") for f in FAMILIES for c in CONFIGS])


def assert_matches(model, proto, shape, batches):
    for comparison in verify_onnx(model, proto, shape, batches, TOLERANCES["fp32"]):
        assert comparison.passed, str(comparison)


def assert_catches_a_sample_mix_up(model, proto, shape):
    """On verify's batch-3 input the attention varies, and rolling it along the batch fails verification."""
    assert_attention_varies(model, verify_inputs(shape, [3])[0])
    with rolled_attention(model):
        assert_fails(verify_onnx(model, proto, shape, [3]), "giving sample n sample n-1's attention")


@pytest.mark.parametrize("family, config, exporter", CASES)
def test_single_layer_exports_one_contract_node_and_matches_every_strategy(family, config, exporter):
    layer = make_layer(family, config)
    shape = input_shape(config)
    proto = export_onnx(layer, torch.randn(*shape), exporter=exporter, opset=EXPORTER_OPSETS[exporter][0])

    (node,) = contract_nodes(proto)
    initializers = {t.name for t in proto.graph.initializer}
    weight, bias = (list(node.input) + [""])[2:4]
    assert weight in initializers and bias in ({""} | initializers)
    assert node.input[1] not in initializers  # the attention is computed in the graph
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert_matches(layer, proto, shape, BATCHES)  # one file, two batch sizes: the batch really is free
    if not static_by_construction(family, config):
        assert_catches_a_sample_mix_up(layer, proto, shape)
    for strategy in ("experts", "plugin"):
        assert_matches(layer, lower(proto, strategy), shape, BATCHES)
    assert_matches(layer, lower(proto, "grouped", static_batch=BATCHES[-1]), shape, BATCHES[-1:])
    assert contract_nodes(lower(proto, "static")) == []
    if exporter == "dynamo":  # the default, auto, takes the TorchScript trace and must give this very graph
        auto = export_onnx(layer, torch.randn(*shape))
        assert read_metadata(auto)["exporter"] == "torchscript"
        assert_same_graph(auto, proto)


@pytest.mark.parametrize("exporter", list(EXPORTER_OPSETS))
def test_odconv_scales_are_muls_around_the_node_and_spatial_attention_is_input_s(exporter):
    layer = ODConv2d(4, 6, 3, padding=1, bias=True).eval()
    proto = export_onnx(layer, torch.randn(1, 4, 7, 7), exporter=exporter, opset=EXPORTER_OPSETS[exporter][0])
    (node,) = contract_nodes(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers = [n for n in proto.graph.node if node.output[0] in n.input]
    assert producers[node.input[0]].op_type == "Mul"  # input-channel attention
    assert [n.op_type for n in consumers] == ["Mul"]  # filter attention
    assert len(node.input) == 5 and node.input[4] not in {t.name for t in proto.graph.initializer}


def test_dynet_attention_is_rank_3_and_dyrelu_stays_standard_ops():
    model = torch.nn.Sequential(make_layer("dynet", CONFIGS[1]), DyReLU(6, mode="C")).eval()
    proto = export_onnx(model, torch.randn(1, 4, 7, 7), exporter="torchscript", opset=17)
    (node,) = contract_nodes(proto)
    shapes = {v.name: v.type.tensor_type.shape for v in proto.graph.value_info}
    assert len(shapes[node.input[1]].dim) == 3
    assert {n.domain for n in proto.graph.node} == {"", "dyconv"}


def test_static_batch_fixes_the_batch_of_the_input_shape():
    layer = make_layer("dynamic_conv", CONFIGS[1])
    proto = export_onnx(layer, torch.randn(3, 4, 7, 7), exporter="torchscript", opset=17, dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert_matches(layer, proto, (3, 4, 7, 7), [3])
    assert_attention_varies(layer, verify_inputs((3, 4, 7, 7), [3])[0])


def test_written_model_passes_the_full_checker_and_records_its_provenance(tmp_path):
    layer = make_layer("condconv", CONFIGS[1])
    path = tmp_path / "layer.onnx"
    export_onnx(layer, torch.randn(1, 4, 7, 7), path, exporter="torchscript", opset=17)
    loaded = onnx.load(str(path))
    check_model(loaded)  # full check, strict shape inference, contract inputs
    assert read_metadata(loaded) == {"version": __version__, "strategy": "plugin", "opset": "17",
                                     "exporter": "torchscript", "source_sha256": state_dict_sha256(layer)}
    assert [p.name for p in tmp_path.iterdir()] == ["layer.onnx"]  # no temporary file left behind


def test_source_hash_changes_with_the_weights():
    layer = make_layer("condconv", CONFIGS[1])
    before = state_dict_sha256(layer)
    with torch.no_grad():
        layer.weight[0, 0, 0, 0, 0] += 1
    assert state_dict_sha256(layer) != before


def test_checker_rejects_computed_expert_kernels():
    proto = export_onnx(make_layer("dynamic_conv", CONFIGS[1]), torch.randn(1, 4, 7, 7), exporter="torchscript",
                        opset=17)
    (node,) = contract_nodes(proto)
    weight = next(t for t in proto.graph.initializer if t.name == node.input[2])
    proto.graph.initializer.remove(weight)
    proto.graph.node.insert(0, onnx.helper.make_node("Identity", ["raw_weight"], [node.input[2]]))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight), "raw_weight"))
    with pytest.raises(ValueError, match="must be initializers"):
        check_model(proto)


@pytest.mark.parametrize("exporter, opset", [("dynamo", 17), ("torchscript", 21), ("onnx2", 18), ("auto", 24)])
def test_unsupported_exporter_or_opset_is_a_one_line_error(exporter, opset):
    with pytest.raises(DyconvError, match="exporter") as info:
        export_onnx(make_layer("dynamic_conv", CONFIGS[1]), torch.randn(1, 4, 7, 7), exporter=exporter, opset=opset)
    assert "\n" not in str(info.value)


def test_capture_failure_names_the_step_and_what_to_do():
    class BatchBranch(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[0] == 2 else x  # specialises the batch

    with pytest.raises(ExportError, match=r"export step 1/4 \(dynamo capture\) failed: .* Next: ") as info:
        export_onnx(BatchBranch(), torch.randn(2, 3, 4, 4))
    assert info.value.step == "dynamo capture"


class PythonInt(torch.nn.Module):
    """``int()`` of a size: the tracer warns that it freezes it, torch.export reads it as it is."""

    def __init__(self):
        super().__init__()
        self.conv = make_layer("dynamic_conv", CONFIGS[1])

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], int(y.shape[1]), -1).mean(2)


def test_auto_falls_back_to_dynamo_when_the_tracer_warns():
    model = PythonInt().eval()
    proto = export_onnx(model, torch.randn(1, 4, 7, 7))
    assert read_metadata(proto)["exporter"] == "dynamo"
    assert_matches(model, proto, (1, 4, 7, 7), BATCHES)


def test_torchscript_refuses_a_trace_that_depends_on_the_batch_size():
    class PerSampleLoop(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x[i] * (i + 1) for i in range(x.shape[0])])  # no TracerWarning

    with pytest.raises(ExportError, match=r"step 2/5 \(torchscript batch check\) failed: the trace at batch 2 differs "
                                          r"from the one at batch 1 .* Next: .* or try --exporter dynamo\.$"):
        export_onnx(PerSampleLoop(), torch.randn(2, 3, 4, 4), exporter="torchscript")


def test_the_batch_check_compares_the_exporters_own_trace_with_one_at_batch_1():
    """The check reuses the trace ``torch.onnx.export`` makes at the example batch: it is recorded, and it is
    the trace the check makes itself at that batch (so a model without batch branches passes)."""
    from dyconv_deploy.export.onnx_export import ExportRequest, _torchscript_translate, _traced_signature

    model = make_layer("odconv", CONFIGS[1]).eval()
    x = torch.randn(2, *input_shape(CONFIGS[1])[1:])
    with torch.no_grad():
        export = _torchscript_translate(model, ExportRequest(x, ["output"], 18, True))
        own, at_batch_1 = _traced_signature(model, x), _traced_signature(model, x[:1])
    assert export.trace is not None and any(kind == "dyconv::dynamic_conv2d" for kind, _, _ in export.trace)
    assert export.trace == own == at_batch_1
    assert torch.jit._get_trace_graph.__name__ == "_get_trace_graph"  # the recording hook is removed


def test_auto_rejects_a_trace_that_warns_and_reports_dynamos_error():
    class ValueBranch(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.mean() > -100 else x  # the same branch at both batch sizes, but a TracerWarning

    with pytest.warns(torch.jit.TracerWarning):  # an explicit --exporter torchscript only warns, as torch does
        export_onnx(ValueBranch(), torch.randn(2, 3, 4, 4), exporter="torchscript")
    with pytest.raises(ExportError, match=r"\(dynamo capture\) failed: .* Next: make forward\(\) traceable "
                                          r"\(no Python branching on tensor values or on the batch size\)\.$"):
        export_onnx(ValueBranch(), torch.randn(2, 3, 4, 4))


class Views(torch.nn.Module):
    """Views the TorchScript graph builds from run-time sizes: ``(n, -1)`` becomes a constant shape, the
    others stay computed (``n`` is not the data's only free dim, or the free piece is not a size read)."""

    def __init__(self):
        super().__init__()
        self.conv = make_layer("odconv", CONFIGS[1])

    def forward(self, x):
        y = self.conv(x)
        n, c = y.shape[0], y.shape[1]
        flat = y.reshape(n, -1)  # [n, c*h*w]
        pairs = y.reshape(n * 2, -1)  # [2n, c*h*w/2]
        mixed = y.permute(1, 0, 2, 3).reshape(c, -1).reshape(n, -1)  # -1 from a tensor whose free dim is n*h*w
        return flat.sum(1) + pairs.reshape(n, -1).mean(1) + mixed.mean(1) * y.shape[0]


def test_views_of_run_time_sizes_match_at_every_batch():
    model = Views().eval()
    proto = export_onnx(model, torch.randn(1, 4, 7, 7))  # torch.export cannot prove these views valid for all n
    assert read_metadata(proto)["exporter"] == "torchscript"
    assert_matches(model, proto, (1, 4, 7, 7), BATCHES)


def test_strategy_choices_match_the_lowering_passes():
    assert STRATEGIES == LOWERING_STRATEGIES


def test_outputs_of_a_multi_output_model_are_numbered():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = make_layer("dynamic_conv", CONFIGS[1])

        def forward(self, x):
            y = self.conv(x)
            return y, y.mean(dim=(2, 3))

    model = TwoHeads().eval()
    proto = export_onnx(model, torch.randn(1, 4, 7, 7), exporter="torchscript", opset=17)
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    comparisons = verify_onnx(model, proto, (1, 4, 7, 7), [2])
    assert [c.name for c in comparisons] == ["output_0@batch2", "output_1@batch2"]
    assert all(c.passed for c in comparisons) and np.isfinite([c.max_abs for c in comparisons]).all()


@pytest.mark.parametrize("shape", [(1, 3, 0, 8), (0, 3, 8, 8), (3, 8, 8)])
def test_an_image_shape_with_an_empty_axis_or_another_rank_is_refused(shape):
    from dyconv_deploy.export.onnx_export import check_image_shape

    with pytest.raises(DyconvError, match="the input shape must be N x C x H x W"):
        check_image_shape(shape)


def test_a_static_batch_of_one_exports_batch_one():
    """Only a dynamic batch is captured with 2 samples; a static batch keeps the example's."""
    torch.manual_seed(0)
    model = make_layer(FAMILIES[0], CONFIGS[0]).eval()
    proto = export_onnx(model, torch.randn(1, *input_shape(CONFIGS[0])[1:]), dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_a_graph_of_another_opset_than_asked_is_refused(monkeypatch):
    """The exporter's graph is checked for the opset asked for (an exporter may upgrade it on its own)."""
    load = onnx.load_model_from_string

    def upgraded(data):
        proto = load(data)
        next(o for o in proto.opset_import if o.domain in ("", "ai.onnx")).version += 1
        return proto

    monkeypatch.setattr(onnx, "load_model_from_string", upgraded)
    with pytest.raises(ExportError, match=r"\(check\) failed: the exporter produced opset 20, not the requested 19"):
        export_onnx(make_layer("condconv", CONFIGS[1]), torch.randn(2, 4, 7, 7), exporter="torchscript", opset=19)


def _view_graph(pieces) -> onnx.ModelProto:
    """``X [batch, 4, 6] -> Relu -> Reshape(Concat(pieces))`` as the TorchScript exporter writes views: a piece is
    ``"n"`` (``Unsqueeze(Gather(Shape, 0))``), ``"n,4"`` (``Shape(start=0, end=2)``: two run-time sizes) or an int."""
    from onnx import TensorProto, helper, numpy_helper

    def ints(name, value):
        return numpy_helper.from_array(np.array(value, np.int64), name)

    nodes = [helper.make_node("Relu", ["X"], ["R"]), helper.make_node("Shape", ["R"], ["shape"])]
    initializers, names = [ints("zero", 0), ints("axis0", [0])], []
    for index, piece in enumerate(pieces):
        if piece == "n":
            nodes += [helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                      helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"])]
            names.append("n1")
        elif piece == "n,4":
            nodes.append(helper.make_node("Shape", ["R"], ["n4"], start=0, end=2))
            names.append("n4")
        else:
            initializers.append(ints(f"piece{index}", [piece]))
            names.append(f"piece{index}")
    nodes += [helper.make_node("Concat", names, ["target"], axis=0),
              helper.make_node("Reshape", ["R", "target"], ["Y"])]
    graph = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4, 6])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("pieces, constant", [
    (["n", 2, -1], True),  # x.view(n, 2, -1): -1 is 12, n becomes the -1
    (["n", 0, 3, 2], False),  # 0 copies dim 1 (allowzero=0): a constant shape with allowzero=1 would not
    (["n,4", 3, 2], False),  # the run-time piece holds two sizes: one -1 cannot stand for both
], ids=["batch-and-fixed", "zero-copies-a-dim", "two-run-time-sizes"])
def test_torchscript_views_become_constant_only_where_exact(pieces, constant):
    from dyconv_deploy.export.static_shapes import optimize
    from dyconv_deploy.runtime import load_runtime

    model = _view_graph(pieces)
    optimized = optimize(model)
    assert ("Concat" not in [n.op_type for n in optimized.graph.node]) == constant
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 4, 6)).astype(np.float32)
        expected = load_runtime(model, "ort-cpu").run({"X": x})["Y"]
        actual = load_runtime(optimized, "ort-cpu").run({"X": x})["Y"]
        assert actual.shape == expected.shape and np.array_equal(actual, expected), batch
