"""The reference math against two independent spellings of the contract.

By linearity, ``conv(x_n, (sum_k A_nk W_k) * S_n) + sum_k A_nk B_k`` equals
``sum_k A_nk (conv(x_n, W_k * S_n) + B_k)``: one plain conv per sample and expert.
"""

import pytest
import torch
import torch.nn.functional as F

from dyconv_deploy.ops import dynamic_conv2d_reference, per_sample_dynamic_conv2d
from dyconv_deploy.tolerance import TOLERANCES, compare

from op_cases import CASES


def expert_sum(x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    top, left, bottom, right = padding
    x = F.pad(x, (left, right, top, bottom))
    outputs = []
    for n in range(x.shape[0]):
        a = attention[n] if attention.dim() == 3 else attention[n][:, None].expand(-1, weight.shape[1])
        total = 0
        for k in range(weight.shape[0]):
            kernel = weight[k] if spatial is None else weight[k] * spatial[n]
            y = F.conv2d(x[n:n + 1], kernel, None if bias is None else bias[k], stride, 0, dilation, groups)
            total = total + a[k][None, :, None, None] * y
        outputs.append(total)
    return torch.cat(outputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("implementation", [dynamic_conv2d_reference, per_sample_dynamic_conv2d],
                         ids=["batch-folded", "per-sample"])
def test_reference_matches_sum_over_experts(implementation, case):
    inputs = case.inputs()
    actual = implementation(**inputs, **case.conv_args())
    expected = expert_sum(*inputs.values(), **case.conv_args())
    result = compare(actual, expected, TOLERANCES["layer"])
    assert result.passed, str(result)


def test_attention_one_hot_is_plain_conv():
    weight = torch.randn(3, 5, 4, 3, 3)
    x = torch.randn(2, 4, 6, 6)
    attention = F.one_hot(torch.tensor([2, 0]), 3).float()
    y = per_sample_dynamic_conv2d(x, attention, weight, padding=(1, 1, 1, 1))
    expected = torch.cat([F.conv2d(x[:1], weight[2], padding=1), F.conv2d(x[1:], weight[0], padding=1)])
    assert compare(y, expected, TOLERANCES["layer"]).passed
