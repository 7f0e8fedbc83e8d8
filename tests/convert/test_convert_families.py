"""Each family's stand-in converts to a canonical layer computing the same function (fp32 tolerance)."""

import pytest
import torch
from cases import CHANNELS, FAMILIES, LAYER_CASES, SIZE, mixed_model, randomize_norms
from standins import islanna_dyrelu, osvai_odconv, timm_condconv

from dyconv_deploy.convert import RoutedConv2d, convert_model
from dyconv_deploy.nn import DynamicConvBase, DyReLU
from dyconv_deploy.tolerance import TOLERANCES, compare


def _assert_same_function(original, converted, x):
    with torch.no_grad():
        comparison = compare(converted(x), original(x), TOLERANCES["fp32"])
    assert comparison.passed, str(comparison)


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
@pytest.mark.parametrize("label", FAMILIES)
def test_layer_converts_to_same_function(label, case):
    torch.manual_seed(0)
    original = FAMILIES[label](case)
    if original is None:
        pytest.skip(f"{label} cannot express {case}")
    original = randomize_norms(original)
    x = torch.randn(case.batch, CHANNELS, SIZE, SIZE)
    converted, report = convert_model(original, x)
    family = label.split("(")[0]
    assert [(r.family, r.num_kernels) for r in report.converted] == [(family, case.k)]
    assert report.converted[0].max_error <= TOLERANCES["fp32"].atol
    assert report.unknown == []
    assert sum(isinstance(m, RoutedConv2d) for m in converted.modules()) == 1
    _assert_same_function(original, converted, torch.randn(case.batch, CHANNELS, SIZE, SIZE))


@pytest.mark.parametrize("stride", [1, 2])
def test_timm_same_padding_is_computed_per_input_size(stride):
    original = _routed_timm(kernel=5, stride=stride, padding="same")
    converted, _ = convert_model(original, torch.randn(2, CHANNELS, 9, 9))
    _assert_same_function(original, converted, torch.randn(3, CHANNELS, 10, 10))


def _routed_timm(kernel, stride, padding):
    from cases import RoutedBlock
    return RoutedBlock(timm_condconv.CondConv2d(CHANNELS, CHANNELS, kernel, stride, padding), CHANNELS).eval()


def test_timm_model_keeps_one_shared_routing_per_block():
    model = randomize_norms(timm_condconv.TinyCondConvNet())
    x = torch.randn(2, 3, 16, 16)
    converted, report = convert_model(model, x)
    assert len(report.converted) == 9 and report.unknown == []
    assert {r.family for r in report.converted} == {"timm_condconv"}
    block = converted.blocks[1][0]
    assert isinstance(block, timm_condconv.CondConvResidual) and isinstance(block.conv_dw, RoutedConv2d)
    assert block.conv_dw.same_padding and block.conv_dw.groups == block.conv_dw.in_channels
    _assert_same_function(model, converted, torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("mode", ["A", "B"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_islanna_dyrelu_converts_to_canonical(mode, k):
    original = getattr(islanna_dyrelu, f"DyReLU{mode}")(CHANNELS, k=k)
    torch.nn.init.normal_(original.fc2.weight)
    x = torch.randn(3, CHANNELS, 5, 5)
    converted, report = convert_model(original, x)
    assert isinstance(converted, DyReLU) and converted.mode == mode
    assert [(r.family, r.num_kernels) for r in report.converted] == [("islanna_dyrelu", k)]
    _assert_same_function(original, converted, x)


def test_osvai_pointwise_single_kernel_path():
    original = randomize_norms(osvai_odconv.ODConv2d(CHANNELS, 12, 1, kernel_num=1))
    converted, report = convert_model(original, torch.randn(2, CHANNELS, 6, 6))
    assert isinstance(converted, RoutedConv2d) and converted.num_kernels == 1
    _assert_same_function(original, converted, torch.randn(3, CHANNELS, 6, 6))


def test_mixed_model_converts_every_family_and_nothing_else():
    model = randomize_norms(mixed_model())
    x = torch.randn(3, CHANNELS, SIZE, SIZE)
    converted, report = convert_model(model, x)
    assert [r.path for r in report.converted] == ["0.conv_pw", "0.conv_dw", "0.conv_pwl",
                                                  *(str(i) for i in range(1, len(model)))]
    assert report.unknown == []
    assert all(isinstance(m, (DynamicConvBase, DyReLU)) for m in list(converted)[1:])
    _assert_same_function(model, converted, torch.randn(2, CHANNELS, SIZE, SIZE))
    assert model[1].__class__ is osvai_odconv.ODConv2d, "the input model must not be modified"


def test_canonical_model_is_left_alone():
    from dyconv_deploy.nn import CondConv2d, DynamicConv2d, ODConv2d
    model = torch.nn.Sequential(DynamicConv2d(CHANNELS, CHANNELS, 3, padding=1), ODConv2d(CHANNELS, CHANNELS, 3),
                                CondConv2d(CHANNELS, CHANNELS, 1), DyReLU(CHANNELS))
    converted, report = convert_model(model, torch.randn(2, CHANNELS, SIZE, SIZE))
    assert report.converted == [] and report.unknown == []
    assert [type(m) for m in converted] == [type(m) for m in model]
