"""The OpenVINO backend: the ``plugins/openvino`` extension and :class:`OpenVinoRuntime` against the reference.

- Single ``dyconv::DynamicConv2d`` nodes over the kernel tests' layer configs (``tests/plugins/layer_configs.py``)
  plus a few the extension's own paths need (grouped / padded 1x1, one and eight experts, DyNet and ODConv
  on the 1x1 MatMul path, a kernel row longer than a mixing tile, a partial last tile), each at batches 1,
  3 (and 17 in fp32) on one runtime (a graph compiled per batch: batch 1 takes the plain-conv route, 3 one
  conv per sample, 17 the batch folded into the groups or the 1x1 MatMul),
  against the float64 reference op, in fp32, with the experts stored as bf16 / f16, and at bf16 inference
  precision. In reduced precision the outputs are compared per unit of the reference's RMS (see the
  ``bf16-experts``, ``f16-experts`` and ``bf16-inference`` entries of :data:`TOLERANCES`), and rounded experts
  are also compared at the fp32 tolerance with the reference on experts rounded to nearest the same way.
- Expert biases that are all equal, after a Softmax over K (a constant bias in the extension) and after
  other normalisations (mixed as usual).
- ODConv's input-channel scale ``X0 * T[:, :, None, None]`` before a node, folded into the kernels at a static
  batch (checked in the read model) and compared with the reference on every route (batches 1, 3, 17), also
  when the scaled X has another consumer; a scale broadcast over the batch stays OpenVINO's.
- The comparisons can fail: fed another sample's attention (or spatial attention), and with the bias dropped
  from the graph, the same check fails.
- Every bundled dynamic sample, exported, lowered with ``plugin`` and run with a dynamic batch (1 and 2)
  against PyTorch eager; the ImageNet ones at 64x64 (``slow``: 5 to 15 s each on two cores, mostly the export
  and the BatchNorm calibration; CI runs them).
- Errors: bad contract nodes, options, and a missing ``DYCONV_OPENVINO_EXTENSION``.

The extension is ``extension_library()`` once per session: ``$DYCONV_OPENVINO_EXTENSION`` (CI's build) or
the default cache (built on first use; about 10 s).
"""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.export.settings import EXPORTER_OPSETS
from dyconv_deploy.lower import lower
from dyconv_deploy.nn import DynamicConvBase
from dyconv_deploy.ops import DOMAIN, OP_TYPE, OP_VERSION
from dyconv_deploy.ops.reference import per_sample_dynamic_conv2d
from dyconv_deploy.runtime import load_runtime
from dyconv_deploy.runtime.openvino_extension import LIBRARY_ENV, extension_library
from dyconv_deploy.runtime.openvino_runtime import MIX_OP, OpenVinoRuntime
from dyconv_deploy.samples import create_sample, default_input_shape, list_samples
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.verify import verify_onnx
from guards import assert_fails, rolled_attention

ov = pytest.importorskip("openvino", reason="needs the openvino wheel (pip install -e '.[test]')")

_spec = importlib.util.spec_from_file_location("_openvino_layer_configs",
                                               Path(__file__).parents[1] / "plugins" / "layer_configs.py")
_layer_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layer_configs)
LayerConfig = _layer_configs.LayerConfig

# Paths of the extension that the kernel tests' configs leave out.
EXTRA_CONFIGS = [
    LayerConfig("pointwise-stride2-groups2", c=8, m=12, experts=2, kernel=1, h=9, w=9, stride=(2, 2), groups=2),
    LayerConfig("pointwise-padded-nobias", c=6, m=8, experts=3, kernel=1, h=7, w=7, padding=(1, 0, 1, 0),
                bias=False),
    LayerConfig("pointwise-dynet-spatial", c=8, m=12, experts=3, kernel=1, h=6, w=6, channel_attention=True,
                spatial=True),
    LayerConfig("pointwise-one-expert", c=8, m=8, experts=1, kernel=1, h=5, w=5),
    LayerConfig("3x3-eight-experts-nobias", c=8, m=8, experts=8, kernel=3, h=7, w=7, padding=(1, 1, 1, 1),
                bias=False),
    LayerConfig("3x3-dynet-nobias", c=4, m=6, experts=2, kernel=3, h=6, w=6, padding=(1, 1, 1, 1),
                channel_attention=True, bias=False),
    LayerConfig("depthwise-3x3-spatial-nobias", c=8, m=8, experts=4, kernel=3, h=7, w=7, padding=(1, 1, 1, 1),
                groups=8, spatial=True, bias=False),
    # One output channel's kernel (2304 floats) is longer than a mixing tile (2048).
    LayerConfig("3x3-row-over-tile", c=256, m=4, experts=2, kernel=3, h=4, w=4, padding=(1, 1, 1, 1)),
    # 6 rows of 300 floats a tile: two tiles, the last partial, per-channel attention across them.
    LayerConfig("pointwise-partial-tile-dynet", c=300, m=9, experts=3, kernel=1, h=3, w=3, channel_attention=True),
]
CONFIGS = _layer_configs.LAYER_CONFIGS + EXTRA_CONFIGS
BATCHES = (1, 3)  # the plain-conv route and one conv per sample (N <= 16)
FOLDED_BATCH = 17  # the batch folded into the groups, or the 1x1 MatMul: checked in f32 only (its own compile)

# expert_dtype / precision -> runtime options, tolerance, compared per unit of the reference's RMS.
MODES = {
    "f32": ({}, TOLERANCES["fp32"], False),
    "bf16-experts": ({"expert_dtype": "bf16"}, TOLERANCES["bf16-experts"], True),
    "f16-experts": ({"expert_dtype": "f16"}, TOLERANCES["f16-experts"], True),
    "bf16-inference": ({"precision": "bf16"}, TOLERANCES["bf16-inference"], True),
}
ROUNDED = {"bf16": torch.bfloat16, "f16": torch.float16}  # torch rounds to nearest even, as the runtime does

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated


@pytest.fixture(scope="session")
def extension() -> Path:
    """The extension library, built at most once (``$DYCONV_OPENVINO_EXTENSION`` or the default cache)."""
    return extension_library()


# Where the CPU lacks bf16 the runtime refuses precision="bf16" (checked below instead of the comparison).
BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def contract_graph(config: LayerConfig, weight: np.ndarray, bias: np.ndarray | None,
                   spatial_placeholder: bool = False) -> onnx.ModelProto:
    """One contract node ``Y = DynamicConv2d(X, A, W[, B][, S])``, X / A / S graph inputs with a free batch.

    Absent trailing optional inputs are left out, an absent B before S is ``""``.
    """
    attention = ["N", config.experts, config.m] if config.channel_attention else ["N", config.experts]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", config.c, config.h, config.w]),
              helper.make_tensor_value_info("A", TensorProto.FLOAT, attention)]
    if config.spatial:
        inputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, ["N", config.kernel, config.kernel]))
    names = ["X", "A", "W", "" if bias is None else "B", "S" if config.spatial else ""]
    while names[-1] == "" and not spatial_placeholder:
        names.pop()
    node = helper.make_node(OP_TYPE, names, ["Y"], domain=DOMAIN, strides=list(config.stride),
                            pads=list(config.padding), dilations=list(config.dilation), group=config.groups)
    initializers = [numpy_helper.from_array(weight, "W")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "B"))
    graph = helper.make_graph([node], "contract", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                                                         None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)])


def layer_case(config: LayerConfig, seed: int = 0):
    """``(weight, bias, {batch: feeds})``: one set of experts, new samples (inputs, attention) per batch."""
    generator = torch.Generator().manual_seed(seed)
    draws = {batch: config.inputs(batch, generator) for batch in (*BATCHES, FOLDED_BATCH)}
    weight, bias = draws[BATCHES[-1]]["weight"], draws[BATCHES[-1]]["bias"]
    feeds = {}
    for batch, draw in draws.items():
        feeds[batch] = {"X": draw["x"].numpy(), "A": draw["attention"].numpy()}
        if config.spatial:
            feeds[batch]["S"] = draw["spatial"].numpy()
    return weight.numpy(), None if bias is None else bias.numpy(), feeds


def reference(config: LayerConfig, feeds: dict, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The naive per-sample reference op, in float64."""
    def f64(array):
        return None if array is None else torch.from_numpy(np.asarray(array)).double()

    return per_sample_dynamic_conv2d(f64(feeds["X"]), f64(feeds["A"]), f64(weight), f64(bias), f64(feeds.get("S")),
                                     **config.conv_kwargs()).numpy()


def check(actual: np.ndarray, expected: np.ndarray, tolerance, per_rms: bool, name: str = "Y"):
    """:func:`compare`, on outputs divided by the reference's RMS when ``per_rms``."""
    if per_rms:
        scale = float(np.sqrt(np.mean(np.square(expected))))
        actual, expected = np.asarray(actual, np.float64) / scale, expected / scale
    return compare(actual, expected, tolerance, name)


def rounded(weight: np.ndarray, expert_dtype: str) -> np.ndarray:
    return torch.from_numpy(weight).to(ROUNDED[expert_dtype]).double().numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_extension_matches_the_reference_op(extension, config, mode):
    options, tolerance, per_rms = MODES[mode]
    weight, bias, feeds = layer_case(config)
    runtime = OpenVinoRuntime(contract_graph(config, weight, bias), extension=extension, **options)
    if options.get("precision") == "bf16" and not BF16:
        with pytest.raises(DyconvError, match="no bf16 support"):
            runtime.load()
        return
    with runtime:
        assert runtime.input_specs[0].shape[0] is None, "the batch must stay dynamic"
        for batch in BATCHES + ((FOLDED_BATCH,) if mode == "f32" else ()):
            expected = reference(config, feeds[batch], weight, bias)
            actual = runtime.run(feeds[batch])["Y"]
            result = check(actual, expected, tolerance, per_rms, f"{config.name}@{batch}")
            assert result.passed, str(result)
            if "expert_dtype" in options:  # the storage itself: experts rounded to nearest, mixed in fp32
                exact = reference(config, feeds[batch], rounded(weight, options["expert_dtype"]), bias)
                result = compare(actual, exact, TOLERANCES["fp32"], f"{config.name}@{batch} (rounded experts)")
                assert result.passed, str(result)
        # The same comparison catches sample n using sample n-1's attention, or spatial attention.
        batch = BATCHES[-1]
        expected = reference(config, feeds[batch], weight, bias)
        for name in ("A", "S"):
            if name in feeds[batch] and (name != "A" or config.experts > 1):  # one expert: A is all ones
                rolled = {**feeds[batch], name: np.roll(feeds[batch][name], 1, axis=0)}
                assert_fails(check(runtime.run(rolled)["Y"], expected, tolerance, per_rms),
                             f"{config.name}: another sample's {name}")


BIASED = [c for c in CONFIGS if c.bias]


@pytest.mark.parametrize("mode", ["f32", "bf16-inference" if BF16 else "bf16-experts"])  # strictest, loosest
@pytest.mark.parametrize("config", BIASED, ids=[c.name for c in BIASED])
def test_a_dropped_bias_fails_the_comparison(extension, config, mode):
    options, tolerance, per_rms = MODES[mode]
    weight, bias, feeds = layer_case(config)
    with OpenVinoRuntime(contract_graph(config, weight, None), extension=extension, **options) as runtime:
        for batch in BATCHES:
            assert_fails(check(runtime.run(feeds[batch])["Y"], reference(config, feeds[batch], weight, bias),
                               tolerance, per_rms), f"{config.name}@{batch}: a dropped bias")


NORMALISERS = {  # ONNX node making A from logits, and the same in torch
    "softmax-axis1": (("Softmax", {"axis": 1}), lambda t: torch.softmax(t, 1)),
    "softmax-axis-1": (("Softmax", {"axis": -1}), lambda t: torch.softmax(t, -1)),
    "softmax-over-the-batch": (("Softmax", {"axis": 0}), lambda t: torch.softmax(t, 0)),
    "sigmoid": (("Sigmoid", {}), torch.sigmoid),
}


@pytest.mark.parametrize("normaliser", NORMALISERS)
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=[CONFIGS[0].name, CONFIGS[2].name])
def test_a_bias_shared_by_every_expert(extension, config, normaliser):
    """Equal expert biases under a softmax over K are a constant bias; under other attention they are mixed."""
    (op, attributes), torch_normaliser = NORMALISERS[normaliser]
    weight, bias, feeds = layer_case(config)
    shared = np.repeat(bias[:1], config.experts, axis=0)
    graph = contract_graph(config, weight, shared)
    graph.graph.input[1].name = "logits"
    graph.graph.node.insert(0, helper.make_node(op, ["logits"], ["A"], **attributes))
    with OpenVinoRuntime(graph, extension=extension) as runtime:
        for batch in BATCHES:
            logits = np.log(feeds[batch]["A"]) * 2  # softmax rows of the config, sharpened: any logits would do
            attention = torch_normaliser(torch.from_numpy(logits).double()).numpy()
            expected = reference(config, {**feeds[batch], "A": attention}, weight, shared)
            result = compare(runtime.run({"X": feeds[batch]["X"], "logits": logits})["Y"], expected,
                             TOLERANCES["fp32"], f"{config.name}@{batch}")
            assert result.passed, str(result)


def test_explicit_empty_optional_inputs_and_one_compile_per_shape(extension):
    """``""`` placeholders for absent B and S read like absent inputs; each input shape compiles once."""
    config = CONFIGS[2]  # 3x3
    weight, bias, feeds = layer_case(config)
    feeds = {batch: {name: feeds[batch][name] for name in ("X", "A")} for batch in BATCHES}
    graph = contract_graph(config, weight, None, spatial_placeholder=True)
    assert list(graph.graph.node[0].input) == ["X", "A", "W", "", ""]
    with load_runtime(graph, "openvino", extension=extension) as runtime:
        for batch in (*BATCHES, *BATCHES):
            result = compare(runtime.run(feeds[batch])["Y"], reference(config, feeds[batch], weight, None),
                             TOLERANCES["fp32"], f"@{batch}")
            assert result.passed, str(result)
        assert len(runtime._compiled) == len(BATCHES)


def channel_scaled_graph(config: LayerConfig, weight: np.ndarray, bias: np.ndarray | None,
                          extra_consumer: bool = False) -> onnx.ModelProto:
    """ODConv's input-channel attention before a contract node:
    ``Y = DynamicConv2d(X0 * T[:, :, None, None], A, W, ...)``
    with graph inputs X0 and T [N, C] (and, with ``extra_consumer``, the scaled X also a graph output)."""
    graph = contract_graph(config, weight, bias)
    graph.graph.input[0].name = "X0"
    graph.graph.input.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, ["N", config.c]))
    graph.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "spatial_axes"))
    graph.graph.node.insert(0, helper.make_node("Unsqueeze", ["T", "spatial_axes"], ["T4"]))
    graph.graph.node.insert(1, helper.make_node("Mul", ["X0", "T4"], ["X"]))
    if extra_consumer:
        graph.graph.output.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, None))
    return graph


SCALED = [c for c in CONFIGS if c.name in ("pointwise", "3x3-grouped-dilated-dynet", "3x3-odconv-spatial",
                                           "depthwise-3x3-stride2", "depthwise-5x5-multiplier-dilated",
                                           "3x3-row-over-tile", "pointwise-dynet-spatial",
                                           "pointwise-stride2-groups2")]


@pytest.mark.parametrize("mode", ["f32", "bf16-inference" if BF16 else "bf16-experts"])
@pytest.mark.parametrize("extra_consumer", [False, True], ids=["scale-only-feeds-the-conv", "scaled-x-also-an-output"])
@pytest.mark.parametrize("config", SCALED, ids=[c.name for c in SCALED])
def test_an_input_channel_scale_is_folded_into_the_kernels(extension, config, extra_consumer, mode):
    """X0 * T before the node becomes MixKernels' input T at a static batch (no pass over X), with the same Y."""
    options, tolerance, per_rms = MODES[mode]
    weight, bias, feeds = layer_case(config)
    generator = np.random.default_rng(1)
    graph = channel_scaled_graph(config, weight, bias, extra_consumer)
    with OpenVinoRuntime(graph, extension=extension, **options) as runtime:
        for batch in BATCHES + ((FOLDED_BATCH,) if mode == "f32" else ()):  # 17: the batch-folded or MatMul route
            scale = generator.uniform(0.2, 1.0, (batch, config.c)).astype(np.float32)  # a sigmoid's range
            x0 = feeds[batch]["X"]
            inputs = {"X0": x0, "T": scale, **{k: v for k, v in feeds[batch].items() if k != "X"}}
            read = runtime._read(tuple(inputs[spec.name].shape for spec in runtime.input_specs))
            mix = [op for op in read.get_ordered_ops() if op.get_type_name() == "MixKernels"]
            assert [op.get_attributes()["with_channel_scale"] for op in mix] == [True]
            expected = reference(config, {**feeds[batch], "X": x0 * scale[:, :, None, None]}, weight, bias)
            outputs = runtime.run(inputs)
            result = check(outputs["Y"], expected, tolerance, per_rms, f"{config.name}@{batch}")
            assert result.passed, str(result)
            if extra_consumer:
                check_x = check(outputs["X"], x0 * scale[:, :, None, None], tolerance, per_rms, "X")
                assert check_x.passed, str(check_x)
            # The comparison catches sample n scaled by sample n-1's T, and T applied to the wrong channels.
            for defect, wrong in (("another sample's T", np.roll(scale, 1, axis=0)),
                                  ("T reversed over the channels", scale[:, ::-1].copy())):
                if batch > 1 or defect != "another sample's T":
                    assert_fails(check(runtime.run({**inputs, "T": wrong})["Y"], expected, tolerance, per_rms),
                                 f"{config.name}@{batch}: {defect}")


def test_a_channel_scale_broadcast_over_the_batch_is_left_to_openvino(extension):
    """T [1, C] for every sample of a batch of 3 is not folded (MixKernels takes one T per sample); Y is right."""
    config = CONFIGS[0]
    weight, bias, feeds = layer_case(config)
    batch = BATCHES[-1]
    scale = np.linspace(0.5, 1.5, config.c, dtype=np.float32)
    graph = channel_scaled_graph(config, weight, bias)
    graph.graph.input[-1].type.tensor_type.shape.dim[0].dim_value = 1
    inputs = {"X0": feeds[batch]["X"], "A": feeds[batch]["A"], "T": scale[None]}
    with OpenVinoRuntime(graph, extension=extension) as runtime:
        read = runtime._read(tuple(inputs[spec.name].shape for spec in runtime.input_specs))
        mix = [op for op in read.get_ordered_ops() if op.get_type_name() == "MixKernels"]
        assert [op.get_attributes()["with_channel_scale"] for op in mix] == [False]
        expected = reference(config, {**feeds[batch], "X": feeds[batch]["X"] * scale[None, :, None, None]},
                             weight, bias)
        result = compare(runtime.run(inputs)["Y"], expected, TOLERANCES["fp32"], "broadcast T")
        assert result.passed, str(result)


DYNAMIC_SAMPLES = [pytest.param(name, marks=[] if name == "tiny_dynamic" else [pytest.mark.slow])
                   for name in list_samples() if not name.endswith("_static")]
SMALL_SHAPE = (1, 3, 64, 64)  # the ImageNet samples at 64x64: the same graphs, a fraction of the work


@pytest.mark.parametrize("name", DYNAMIC_SAMPLES)
def test_sample_plugin_graph_matches_eager_with_a_dynamic_batch(extension, name):
    model = create_sample(name)
    shape = min(default_input_shape(name), SMALL_SHAPE, key=lambda s: s[-1])
    proto = lower(export_onnx(model, torch.randn(*shape), exporter="torchscript",
                              opset=EXPORTER_OPSETS["torchscript"][0]), "plugin")
    assert len(contract_nodes(proto)) == sum(isinstance(m, DynamicConvBase) for m in model.modules()) > 0
    with load_runtime(proto, "openvino", extension=extension) as runtime:
        for comparison in verify_onnx(model, runtime, shape, (1, 2), TOLERANCES["fp32"]):
            assert comparison.passed, f"{name}: {comparison}"
        with rolled_attention(model):  # every layer's attention of the sample before: the comparison must fail
            assert_fails(verify_onnx(model, runtime, shape, (2,), TOLERANCES["fp32"]),
                         f"{name}: another sample's attention")


def _bad_graph(c=4, m=6, k=3, group=1, attention=("N", 3)):
    weight = np.random.default_rng(0).standard_normal((k, m, c // group, 3, 3)).astype(np.float32)
    node = helper.make_node(OP_TYPE, ["X", "A", "W"], ["Y"], domain=DOMAIN, pads=[1, 1, 1, 1], group=group)
    graph = helper.make_graph([node], "contract", [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", c, 5, 5]),
        helper.make_tensor_value_info("A", TensorProto.FLOAT, list(attention))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)])


def _feeds(c=4, k=3):
    return {"X": np.zeros((2, c, 5, 5), np.float32), "A": np.full((2, k), 1 / k, np.float32)}


def test_attention_with_the_wrong_number_of_experts_is_a_clear_error(extension):
    with pytest.raises(DyconvError, match=r"attention A \[.*2\] does not have the K = 3 experts of W"):
        OpenVinoRuntime(_bad_graph(attention=("N", 2)), extension=extension).load()
    # A free K in the file: the runtime fixes the fed shapes, so the node fails when the shape is known.
    with OpenVinoRuntime(_bad_graph(attention=("N", "K")), extension=extension) as runtime:
        assert runtime.run(_feeds())["Y"].shape == (2, 6, 5, 5)
        with pytest.raises(DyconvError, match=r"does not have the K = 3 experts"):
            runtime.run(_feeds(k=2))


def test_a_group_that_does_not_divide_the_output_channels_is_a_clear_error(extension):
    with pytest.raises(DyconvError, match="group 4 does not divide the 6 output channels"):
        OpenVinoRuntime(_bad_graph(c=8, group=4), extension=extension).load()


def test_a_result_outlives_the_next_run_and_threads_reach_the_compiled_model(extension):
    """Outputs are the caller's arrays: the next run at the same shapes (the same infer request) leaves an
    earlier result as it was; ``threads`` is the compiled model's thread count."""
    config = CONFIGS[2]  # 3x3
    weight, bias, feeds = layer_case(config)
    batch = BATCHES[-1]
    other = {name: np.ascontiguousarray(value[::-1]) for name, value in feeds[batch].items()}  # samples reversed
    with OpenVinoRuntime(contract_graph(config, weight, bias), extension=extension, threads=1) as runtime:
        first = runtime.run(feeds[batch])["Y"]
        kept = first.copy()
        second = runtime.run(other)["Y"]
        (request,) = runtime._compiled.values()
        assert request.get_compiled_model().get_property("INFERENCE_NUM_THREADS") == 1
    assert not np.allclose(second, kept)  # the second run computed something else
    np.testing.assert_array_equal(first, kept)
    result = compare(first, reference(config, feeds[batch], weight, bias), TOLERANCES["fp32"])
    assert result.passed, str(result)


def test_the_profile_reads_the_last_run_and_only_nodes_that_ran(extension):
    config = CONFIGS[2]
    weight, bias, feeds = layer_case(config)
    with OpenVinoRuntime(contract_graph(config, weight, bias), extension=extension, profile=True) as runtime:
        runtime.run(feeds[BATCHES[-1]])
        profile = runtime.profile(feeds[BATCHES[-1]])
    types = [node_type for _, node_type, _ in profile]
    assert any(MIX_OP in name for name, _, _ in profile)  # the extension's kernel mixing, an op of its own
    assert not {"Parameter", "Result"} & set(types)  # graph inputs and outputs never run
    assert all(ms >= 0 for _, _, ms in profile) and sum(ms for _, _, ms in profile) > 0


def test_bf16_experts_round_ties_to_even_and_keep_a_nan(extension):
    """Experts exactly half-way between two bf16 values go to the even one (as torch rounds), and a NaN whose
    payload lies in the dropped low bits stays a NaN (not an infinity). X is all ones times the sample number:
    output channel 0 is the sum of the stored row, channel 1 holds the NaN."""
    config = LayerConfig("pointwise-ties", c=4, m=2, experts=1, kernel=1, h=2, w=2, bias=False)
    ties = [1 + 2**-8, 1 + 3 * 2**-8, 2 + 2**-7, 1.0]  # -> 1, 1 + 2**-6 (even), 2, 1; ties up: 5.0390625
    nan = np.array([0x7F800001], np.uint32).view(np.float32)[0]  # the top 16 bits alone are +inf
    weight = np.array([ties, [nan, 1.0, 1.0, 1.0]], np.float32).reshape(1, 2, 4, 1, 1)
    with OpenVinoRuntime(contract_graph(config, weight, None), extension=extension, expert_dtype="bf16") as runtime:
        scale = np.arange(1, 4, dtype=np.float32)[:, None, None, None]  # a batch of 3 samples that differ
        feeds = {"X": np.ones((3, 4, 2, 2), np.float32) * scale, "A": np.ones((3, 1), np.float32)}
        actual = runtime.run(feeds)["Y"]
    expected = reference(config, feeds, rounded(weight, "bf16"), None)
    np.testing.assert_array_equal(actual[:, 0], np.broadcast_to(5.015625 * scale[:, 0], (3, 2, 2)))
    np.testing.assert_array_equal(actual[:, 0], expected[:, 0])
    assert np.isnan(actual[:, 1]).all() and np.isnan(expected[:, 1]).all()


@pytest.mark.parametrize("option, value", [("precision", "fp64"), ("precision", "f16"), ("expert_dtype", "int8")])
def test_unknown_precisions_are_refused(option, value):
    with pytest.raises(DyconvError, match=f"must be one of .*got '{value}'"):
        load_runtime(_bad_graph(), "openvino", **{option: value})


def test_a_missing_extension_file_is_refused(tmp_path, monkeypatch):
    missing = tmp_path / "libdyconv_openvino.so"
    monkeypatch.setenv(LIBRARY_ENV, str(missing))
    with pytest.raises(DyconvError, match=f"{LIBRARY_ENV}={missing}: no such file .*build-plugin --target openvino"):
        extension_library()
    with pytest.raises(DyconvError, match="no such file"):
        OpenVinoRuntime(_bad_graph()).load()
    # A graph without contract nodes needs no extension.
    conv = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "relu",
                             [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2])],
                             [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])])
    with OpenVinoRuntime(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)])) as runtime:
        np.testing.assert_array_equal(runtime.run({"X": np.array([[-1.0, 2.0]], np.float32)})["Y"], [[0.0, 2.0]])


def test_the_extension_is_the_environment_build_or_a_cached_one(extension, monkeypatch):
    assert extension.is_file() and extension_library() == extension  # the session's library, found again
    monkeypatch.setattr("dyconv_deploy.runtime.openvino_extension.build_extension",
                        lambda *args, **kwargs: pytest.fail("rebuilt a cached extension"))
    assert extension_library() == extension


@pytest.fixture(scope="module")
def ablation():
    """``benchmarks/openvino_ablation.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        "_openvino_ablation", Path(__file__).parents[2] / "benchmarks" / "openvino_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["f32", "bf16"] if BF16 else ["f32"])
def test_the_ablation_script_replaces_exactly_the_mixing(extension, ablation, precision):
    """benchmarks/openvino_ablation.py's ``weights only`` model: fed the kernels and biases MixKernels would have
    made, it gives the plugin graph's Y, so its time differs from the plugin's by the attention and mixing alone."""
    config = CONFIGS[2]  # 3x3 with distinct expert biases: both outputs of MixKernels are replaced
    weight, bias, feeds = layer_case(config)
    batch = BATCHES[0]
    shapes = ((batch, config.c, config.h, config.w), (batch, config.experts))
    with OpenVinoRuntime(contract_graph(config, weight, bias), extension=extension, precision=precision) as runtime:
        ablation.compiled(runtime, ablation.without_mixing(runtime._read(shapes)), feeds[batch]["X"])()  # as it times
        if precision != "f32":
            return
        graph = ablation.without_mixing(runtime._read(shapes))
        types = {op.get_type_name() for op in graph.get_ordered_ops()}
        assert "MixKernels" not in types and "GroupConvolution" in types
        request = runtime._core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        a = feeds[batch]["A"].astype(np.float64)
        kernels = np.einsum("nk,k...->n...", a, weight).astype(np.float32)  # [N*G, M/G, C/G, kH, kW] at G = 1
        biases = (a @ bias).astype(np.float32)[:, :, None, None]
        values = {"X": feeds[batch]["X"], "A": feeds[batch]["A"]}
        for port in request.model_inputs:
            name = port.get_any_name() if port.get_names() else ""
            value = values.get(name, kernels if len(port.get_shape()) == 5 else biases)
            request.set_tensor(port, ov.Tensor(np.ascontiguousarray(value)))
        request.infer()
        result = compare(request.get_output_tensor(0).data, reference(config, feeds[batch], weight, bias),
                         TOLERANCES["fp32"], "weights only, fed the mixed kernels")
        assert result.passed, str(result)



def test_the_ablation_script_prints_its_table(extension, ablation, tmp_path, monkeypatch, capsys):
    """``python benchmarks/openvino_ablation.py --sample tiny_dynamic``: one row per batch, ratios to the twin."""
    monkeypatch.setattr("sys.argv", ["openvino_ablation.py", "--sample", "tiny_dynamic", "--batches", "1", "2",
                                     "--iterations", "2", "--warmup", "1", "--cache-dir", str(tmp_path)])
    ablation.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny_dynamic on OpenVINO, f32") and "run-time weights" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2"] and all(row[3].startswith("(") and row[3].endswith("x)")
                                                          for row in rows)
