"""Each family's stand-in converts to a canonical layer computing the same function (fp32 tolerance).

Every comparison can fail: the attention of each converted layer varies across the batch, another input
fails it, and so does giving sample n sample n-1's attention (:mod:`guards`).
"""

import pytest
import torch
from cases import CHANNELS, FAMILIES, LAYER_CASES, calibrated, images, mixed_model
from guards import assert_attention_varies, assert_depends_on_input, assert_fails, attention_spread, rolled_attention
from standins import islanna_dyrelu, osvai_odconv, timm_condconv

from dyconv_deploy.convert import RoutedConv2d, convert_model
from dyconv_deploy.nn import DynamicConvBase, DyReLU
from dyconv_deploy.tolerance import TOLERANCES, Tolerance, compare


def _assert_same_function(original, converted, x, dynamic: bool = True,
                          tolerance: Tolerance = TOLERANCES["fp32"]):
    """``converted(x) == original(x)`` within ``tolerance``, for ``x [N >= 2, ...]``; the original's output depends
    on its input and, unless the model is not ``dynamic`` (softmax over one expert), the attention of every
    converted layer varies across the batch and rolling it along the batch fails the comparison."""
    def comparison():
        with torch.no_grad():
            return compare(converted(x), original(x), tolerance)

    result = comparison()
    assert result.passed, str(result)
    assert_depends_on_input(original, x, tolerance)
    if not dynamic:
        assert attention_spread(converted, x) == {}
        return
    assert_attention_varies(converted, x)
    with rolled_attention(converted):
        assert_fails(comparison(), "giving sample n sample n-1's attention")


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
@pytest.mark.parametrize("label", FAMILIES)
def test_layer_converts_to_same_function(label, case):
    torch.manual_seed(0)
    original = FAMILIES[label](case)
    if original is None:
        pytest.skip(f"{label} cannot express {case}")
    original = calibrated(original)
    converted, report = convert_model(original, images(case.batch))
    family = label.split("(")[0]
    assert [(r.family, r.num_kernels) for r in report.converted] == [(family, case.k)]
    assert report.converted[0].max_error <= TOLERANCES["fp32"].atol
    assert report.unknown == []
    assert sum(isinstance(m, RoutedConv2d) for m in converted.modules()) == 1
    _assert_same_function(original, converted, images(), dynamic=not case.static_by_construction(label))


@pytest.mark.parametrize("stride", [1, 2])
def test_timm_same_padding_is_computed_per_input_size(stride):
    original = _routed_timm(kernel=5, stride=stride, padding="same")
    converted, _ = convert_model(original, images(2))
    _assert_same_function(original, converted, images(size=10))


def _routed_timm(kernel, stride, padding):
    from cases import RoutedBlock
    return RoutedBlock(timm_condconv.CondConv2d(CHANNELS, CHANNELS, kernel, stride, padding), CHANNELS).eval()


def test_timm_model_keeps_one_shared_routing_per_block():
    shape = (3, 3, 16, 16)
    model = calibrated(timm_condconv.TinyCondConvNet(), shape)
    converted, report = convert_model(model, images(2, 3, 16))
    assert len(report.converted) == 9 and report.unknown == []
    assert {r.family for r in report.converted} == {"timm_condconv"}
    block = converted.blocks[1][0]
    assert isinstance(block, timm_condconv.CondConvResidual) and isinstance(block.conv_dw, RoutedConv2d)
    assert block.conv_dw.same_padding and block.conv_dw.groups == block.conv_dw.in_channels
    _assert_same_function(model, converted, images(*shape[:2], shape[-1]))


@pytest.mark.parametrize("mode", ["A", "B"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_islanna_dyrelu_converts_to_canonical(mode, k):
    original = getattr(islanna_dyrelu, f"DyReLU{mode}")(CHANNELS, k=k)
    torch.nn.init.normal_(original.fc2.weight)
    x = images(size=5)
    converted, report = convert_model(original, x)
    assert isinstance(converted, DyReLU) and converted.mode == mode
    assert [(r.family, r.num_kernels) for r in report.converted] == [("islanna_dyrelu", k)]
    _assert_same_function(original, converted, x)


def test_osvai_pointwise_single_kernel_path():
    original = calibrated(osvai_odconv.ODConv2d(CHANNELS, 12, 1, kernel_num=1))
    converted, report = convert_model(original, images(2, size=6))
    assert isinstance(converted, RoutedConv2d) and converted.num_kernels == 1
    _assert_same_function(original, converted, images(size=6))


def test_mixed_model_converts_every_family_and_nothing_else():
    model = mixed_model()
    converted, report = convert_model(model, images())
    dynamic = [str(i) for i, m in enumerate(model) if not isinstance(m, torch.nn.BatchNorm2d)]
    assert [r.path for r in report.converted] == ["0.conv_pw", "0.conv_dw", "0.conv_pwl", *dynamic[1:]]
    assert report.unknown == []
    assert all(isinstance(converted[int(i)], (DynamicConvBase, DyReLU)) for i in dynamic[1:])
    _assert_same_function(model, converted, images())
    assert model[2].__class__ is osvai_odconv.ODConv2d, "the input model must not be modified"


def test_canonical_model_is_left_alone():
    from dyconv_deploy.nn import CondConv2d, DynamicConv2d, ODConv2d
    model = torch.nn.Sequential(DynamicConv2d(CHANNELS, CHANNELS, 3, padding=1), ODConv2d(CHANNELS, CHANNELS, 3),
                                CondConv2d(CHANNELS, CHANNELS, 1), DyReLU(CHANNELS))
    converted, report = convert_model(model, images(2))
    assert report.converted == [] and report.unknown == []
    assert [type(m) for m in converted] == [type(m) for m in model]


# Adapter -> the family of the canonical layer it builds: the math (softmax/sigmoid routing, omni-dimensional, DyNet).
CANONICAL_FAMILIES = {
    "timm_condconv": "condconv", "osvai_odconv": "odconv", "kaijieshi7_dynamic_conv": "dynamic_conv",
    "external_attention": "dynamic_conv", "external_attention(CondConv)": "condconv",
    "per_sample_dynamic_conv": "dynamic_conv", "per_sample_odconv": "odconv", "dynet": "dynet",
}


@pytest.mark.parametrize("label", FAMILIES)
def test_converted_layer_names_its_math_as_family_and_the_adapter_as_source(label):
    case = LAYER_CASES[1]  # 3x3, no bias: every family can express it
    converted, report = convert_model(FAMILIES[label](case), images(case.batch))
    [layer] = [m for m in converted.modules() if isinstance(m, RoutedConv2d)]
    assert (layer.family, layer.source) == (CANONICAL_FAMILIES[label], report.converted[0].family)
