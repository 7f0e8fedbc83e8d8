"""The sample registry, the static twins and the complexity analysis on them."""

import pytest
import torch
from torch import nn

from guards import assert_depends_on_input

from dyconv_deploy.analysis import analyze
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.inputs import random_images
from dyconv_deploy.io import load_model
from dyconv_deploy.nn import DynamicConv2d, DynamicConvBase
from dyconv_deploy.samples import SAMPLES, create_sample, default_input_shape, list_samples

DYNAMIC = [name for name in SAMPLES if not name.endswith("_static")]
SMALL_SHAPE = (1, 3, 64, 64)  # twins are compared at a small size; the counts scale alike


def test_every_sample_has_a_static_twin():
    assert set(list_samples()) == set(DYNAMIC) | {f"{name}_static" for name in DYNAMIC}
    assert default_input_shape("tiny_dynamic") == (1, 3, 32, 32)
    assert default_input_shape("dy_mobilenetv2") == (1, 3, 224, 224)


def test_unknown_sample_names_the_closest():
    with pytest.raises(DyconvError, match="did you mean 'dy_resnet18'"):
        load_model("sample:dy_resnet19")


def test_samples_are_deterministic():
    first, second = create_sample("tiny_dynamic"), create_sample("tiny_dynamic")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_tiny_sample_output_depends_on_the_input():
    assert_depends_on_input(create_sample("tiny_dynamic"), random_images((3, *default_input_shape("tiny_dynamic")[1:])))


@pytest.mark.parametrize("name", [name for name in DYNAMIC if name != "tiny_dynamic"])  # tiny has DyReLU too
def test_static_twin_is_the_same_network_without_attention(name):
    dynamic = analyze(load_model(f"sample:{name}"), SMALL_SHAPE)
    static_model = load_model(f"sample:{name}_static")
    static = analyze(static_model, SMALL_SHAPE)
    assert dynamic.layers and not static.layers
    assert not any(isinstance(m, DynamicConvBase) for m in static_model.modules())
    # The convolution column of the dynamic network is exactly what its twin's convs cost.
    assert static.other == dynamic.convolution + dynamic.other


def test_tiny_sample_has_one_layer_of_each_family():
    report = analyze(load_model("sample:tiny_dynamic"), default_input_shape("tiny_dynamic"))
    assert [layer.family for layer in report.layers] == ["dynamic_conv", "condconv", "odconv", "dynet"]


# Reference parameter counts of the static twins' architectures (torchvision, timm) and MAdds at 224
# in millions (as OSVAI/ODConv reports them).
@pytest.mark.parametrize("name,params,madds", [
    ("dy_mobilenetv2_static", 3_504_872, 300.8),  # torchvision mobilenet_v2
    ("dy_resnet18_static", 11_689_512, 1814.1),  # torchvision resnet18
    ("condconv_efficientnet_b0_static", 5_288_548, None),  # timm efficientnet_b0
])
def test_static_twins_match_reference_architectures(name, params, madds):
    model = load_model(f"sample:{name}")
    assert sum(p.numel() for p in model.parameters()) == params
    if madds is not None:
        assert round(analyze(model, default_input_shape(name)).total.madds / 1e6, 1) == madds


def test_odconv_sample_matches_osvai_parameter_count():
    model = load_model("sample:odconv_mobilenetv2")
    assert round(sum(p.numel() for p in model.parameters()), -4) == 11.51e6


def test_analysis_splits_a_single_layer_by_hand():
    layer = nn.Sequential(DynamicConv2d(4, 6, 3, padding=1, num_kernels=4, reduction=2))
    report = analyze(layer, (2, 4, 5, 5))
    (row,) = report.layers
    kernel = 6 * 4 * 3 * 3
    assert row.kernel_shape == (6, 4, 3, 3) and row.output_shape == (2, 6, 5, 5)
    assert row.convolution.madds == 2 * 6 * 5 * 5 * 4 * 3 * 3
    assert row.aggregation.madds == 2 * (4 * kernel + 4 * 6)  # sum_k A W and sum_k A B per sample
    assert row.attention.madds == 2 * (4 * 2 + 2 * 4)  # FC 4 -> 2 and FC 2 -> 4 per sample
    assert row.convolution.params == kernel + 6 and row.aggregation.params == 3 * (kernel + 6)
    assert report.total.params == sum(p.numel() for p in layer.parameters())


def test_odconv_sample_is_well_conditioned_on_verify_inputs():
    """Untrained, ODConv's attention-dependent gain compounded over 52 layers: a few images blew up (fp32 and
    fp64 differed by 4.5 at magnitude 5) and the rest faded; the sample starts near its static twin instead."""
    import copy

    from guards import assert_attention_varies

    from dyconv_deploy.verify import verify_inputs

    model = create_sample("odconv_mobilenetv2")
    (x,) = verify_inputs(default_input_shape("odconv_mobilenetv2"), (3,))
    with torch.no_grad():
        y, y64 = model(x), copy.deepcopy(model).double()(x.double())
    assert float((y.double() - y64).abs().max() / y64.abs().max()) < 1e-4
    assert float(y64.std(0).max()) > 0.1 * float(y64.abs().max())  # the output depends on the image
    assert_attention_varies(model, x)
