"""``torch.ops.dyconv.dynamic_conv2d``: kernel, registrations (opcheck) and ``torch.export`` with a dynamic batch."""

import pytest
import torch

from dyconv_deploy.nn import DynamicConv2d, ODConv2d
from dyconv_deploy.ops import dynamic_conv2d, dynamic_conv2d_reference
from dyconv_deploy.tolerance import TOLERANCES, compare

from op_cases import CASES


def op_args(case):
    inputs = case.inputs()
    conv = case.conv_args()
    return (*inputs.values(), list(conv["stride"]), list(conv["padding"]), list(conv["dilation"]), conv["groups"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_matches_reference(case):
    inputs = case.inputs()
    result = compare(dynamic_conv2d(**inputs, **case.conv_args()),
                     dynamic_conv2d_reference(**inputs, **case.conv_args()), TOLERANCES["layer"])
    assert result.passed, str(result)


@pytest.mark.parametrize("case", CASES[3:], ids=lambda c: c.name)
def test_opcheck_fake_kernel_and_autograd_registration(case):
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in op_args(case)]
    torch.library.opcheck(torch.ops.dyconv.dynamic_conv2d.default, args)


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dynamic = DynamicConv2d(3, 8, 3, stride=2, padding=1, temperature=1.0)
        self.odconv = ODConv2d(8, 8, 3, padding=(0, 1, 2, 1))

    def forward(self, x):
        return self.odconv(torch.relu(self.dynamic(x)))


def test_export_with_dynamic_batch_keeps_one_node_per_layer():
    model = _TwoLayers().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 12, 12),), dynamic_shapes=({0: batch},))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.dyconv.dynamic_conv2d.default) == 2
    for n in (1, 5):
        x = torch.randn(n, 3, 12, 12)
        with torch.no_grad():
            result = compare(program.module()(x), model(x), TOLERANCES["layer"])
        assert result.passed, str(result)


@pytest.mark.parametrize("padding", [(1, 0, 2, 1), (0, 2, 0, 1)])
def test_fake_kernel_shape_matches_the_real_op_on_asymmetric_geometry(padding):
    """torch.export and the dynamo exporter take the output shape from the fake kernel: every axis its own
    kernel size, stride, pads and dilation, checked with torch.library.opcheck."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=generator)
    attention = torch.softmax(torch.randn(2, 3, generator=generator), 1)
    weight = torch.randn(3, 6, 4, 2, 3, generator=generator)
    bias = torch.randn(3, 6, generator=generator)
    args = (x, attention, weight, bias, None, [2, 1], list(padding), [1, 2], 1)
    torch.library.opcheck(torch.ops.dyconv.dynamic_conv2d.default, args, test_utils=("test_faketensor",))
