"""Dynamic convs no adapter knows, written here in styles of their own, are recognised from their torch.fx trace.

Each layer folds the batch into conv groups but stores and mixes its experts its own way. The converted model
must match the original, export with a dynamic batch and verify on ONNX Runtime at batch 3; the checks can fail
(the original depends on its input, the attention varies over the batch, and rolling it along the batch fails).
Layers the trace cannot read (a loop over the batch) stay unknown with the reason.
"""

import pytest
import torch
import torch.nn.functional as F
from guards import assert_attention_varies, assert_depends_on_input, assert_fails, rolled_attention
from torch import nn

from dyconv_deploy.convert import RoutedConv2d, convert_model
from dyconv_deploy.convert.traced import NotRecognised, recognise_traced
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.inputs import random_images
from dyconv_deploy.lower import lower
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.verify import verify_onnx

SHAPE = (3, 8, 12, 12)


class FlatExperts(nn.Module):
    """Experts flattened ``[K, M*C/G*k*k]``, a 1x1-conv softmax attention with a temperature, mixed bias ``a @ b``."""

    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, experts=4, temperature=4.0):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.padding, self.groups = cin, cout, k, stride, padding, groups
        self.route = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 6, 1), nn.ReLU(), nn.Conv2d(6, experts, 1))
        self.temperature = temperature
        self.experts = nn.Parameter(torch.randn(experts, cout * cin // groups * k * k) * 0.3)
        self.expert_bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

    def forward(self, x):
        n, c, h, w = x.shape
        a = F.softmax(self.route(x).flatten(1) / self.temperature, dim=1)
        weight = (a @ self.experts).view(n * self.cout, self.cin // self.groups, self.k, self.k)
        y = F.conv2d(x.view(1, n * c, h, w), weight, (a @ self.expert_bias).view(-1), self.stride, self.padding,
                     1, self.groups * n)
        return y.view(n, self.cout, y.size(2), y.size(3))


class ChannelMajorExperts(nn.Module):
    """Experts stored ``[M, K, C, kH, kW]`` (K not the first axis), einsum mixing, a 3x5 dilated kernel, no bias."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.cout = cout
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(cout, experts, cin, 3, 5) * 0.3)

    def forward(self, x):
        b = x.size(0)
        a = torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=-1)
        kernels = torch.einsum("bk,mkcij->bmcij", a, self.weight).reshape(-1, *self.weight.shape[2:])
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), kernels, None, 1, (2, 4), 2, b)
        return y.reshape(b, self.cout, *y.shape[-2:])


class StackedSigmoidExperts(nn.Module):
    """CondConv-style: a ``ParameterList`` of kernels, sigmoid routing, a broadcast multiply-sum, a static bias
    repeated over the batch, ``padding='same'``."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.cout = cout
        self.kernels = nn.ParameterList([nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3) for _ in range(experts)])
        self.routing = nn.Linear(cin, experts)
        self.bias = nn.Parameter(torch.randn(cout) * 0.5)

    def forward(self, x):
        n, c, h, w = x.shape
        a = torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        experts = torch.stack(list(self.kernels))
        kernels = (a.view(n, -1, 1, 1, 1, 1) * experts.unsqueeze(0)).sum(1)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels.reshape(n * self.cout, c, 3, 3), self.bias.repeat(n),
                     padding="same", groups=n)
        return y.view(n, self.cout, *y.shape[-2:])


class DynamicConv(nn.Module):
    """A class of its own that shares External-Attention's name and attributes (``attention``, ``K``, a 5-D
    ``weight``) but whose attention takes the pooled vector: the name-matched adapter cannot convert it."""

    def __init__(self, cin, cout, K=4):
        super().__init__()
        self.K, self.cout = K, cout
        self.attention = nn.Sequential(nn.Linear(cin, K), nn.Softmax(-1))
        self.weight = nn.Parameter(torch.randn(K, cout, cin, 3, 3) * 0.3)
        self.bias = None

    def forward(self, x):
        n, c, h, w = x.shape
        a = self.attention(x.mean((2, 3)))
        kernels = torch.einsum("nk,kmcij->nmcij", a, self.weight).flatten(0, 1)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels, None, 1, 1, 1, n)
        return y.view(n, self.cout, h, w)


class PerSampleLoop(nn.Module):
    """One conv per sample in a Python loop: torch.fx cannot trace it."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        a = torch.softmax(self.fc(x.mean((2, 3))), 1)
        return torch.cat([F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a[i], self.weight), padding=1)
                          for i in range(x.shape[0])])


LAYERS = {
    "flat-experts-stride2-groups": (lambda: FlatExperts(8, 8, 3, stride=2, padding=0, groups=2), "dynamic_conv"),
    "channel-major-einsum-dilated": (lambda: ChannelMajorExperts(8, 6), "dynamic_conv"),
    "stacked-sigmoid-same": (lambda: StackedSigmoidExperts(8, 8), "condconv"),
    "name-collision": (lambda: DynamicConv(8, 8), "dynamic_conv"),
}


def _net(layer: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), layer, nn.ReLU())
    with torch.no_grad():  # attention logits spread enough that samples get their own mixture
        for module in layer.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(4.0)
    return net.eval()


@pytest.fixture(scope="module", params=list(LAYERS))
def converted(request):
    build, family = LAYERS[request.param]
    torch.manual_seed(0)
    model = _net(build())
    converted, report = convert_model(model, random_images(SHAPE))
    return model, converted, report, family


def test_the_layer_is_converted_from_its_trace(converted):
    _, model, report, family = converted
    assert report.unknown == []
    assert [(r.path, r.family) for r in report.converted] == [("2", "traced")]
    layer = model[2]
    assert isinstance(layer, RoutedConv2d) and layer.source == "traced" and layer.family == family
    assert report.summary().startswith("converted 1 traced layer")


def test_converted_model_matches_and_the_check_can_fail(converted):
    original, model, _, _ = converted
    x = random_images(SHAPE)
    assert_depends_on_input(original, x)
    assert_attention_varies(model, x)
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        with rolled_attention(model):
            assert not torch.allclose(model(x), expected, rtol=1e-3, atol=1e-3), "rolled attention went unnoticed"


def test_export_verifies_on_onnx_runtime_at_batch_3(converted):
    original, model, _, _ = converted
    proto = export_onnx(model, random_images((1, *SHAPE[1:])))
    assert len(contract_nodes(proto)) == 1
    for strategy in ("plugin", "experts"):
        lowered = lower(proto, strategy)
        for comparison in verify_onnx(original, lowered, SHAPE, [3], TOLERANCES["fp32"]):
            assert comparison.passed, f"{strategy}: {comparison}"
        with rolled_attention(model):
            assert_fails(verify_onnx(model, lowered, SHAPE, [3]), "giving sample n sample n-1's attention")


def test_a_loop_over_the_batch_stays_unknown_with_the_reason():
    model = _net(PerSampleLoop(8, 8))
    _, report = convert_model(model, random_images(SHAPE))
    assert report.converted == []
    assert [(u.path, u.module_type) for u in report.unknown] == [("2", "PerSampleLoop")]
    assert "torch.fx cannot trace its forward" in report.unknown[0].reason
    assert report.summary() == "1 dynamic conv not converted: 2"
    with pytest.raises(Exception, match=r"2 \(PerSampleLoop: not recognised from its trace: torch.fx cannot trace"):
        report.raise_for_unknown()


def test_a_layer_without_a_folded_conv_is_not_recognised():
    class SharedKernel(nn.Module):  # one weight for the whole batch, from the batch mean: not per sample
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 8, 8, 3, 3))

        def forward(self, x):
            a = torch.softmax(x.mean((0, 2, 3))[:2], 0)
            return F.conv2d(x, torch.einsum("k,kmcij->mcij", a, self.weight), padding=1)

    with pytest.raises(NotRecognised, match="does not fold the batch into groups"):
        recognise_traced(SharedKernel(), torch.zeros(SHAPE))


def test_an_expert_layout_that_does_not_reproduce_the_layer_is_refused():
    layer = ChannelMajorExperts(8, 6).eval()
    # Transposed kernels (kW, kH swapped in the mixing) would fit no reading: the probe rejects every one.
    broken = type("Transposed", (ChannelMajorExperts,), {
        "forward": lambda self, x: ChannelMajorExperts.forward(self, x.transpose(2, 3)).transpose(2, 3)})
    module = broken(8, 6)
    module.load_state_dict(layer.state_dict())
    with pytest.raises(NotRecognised, match="no reading"):
        recognise_traced(module.eval(), torch.zeros(SHAPE))
