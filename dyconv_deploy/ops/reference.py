"""Reference math of ``dyconv::DynamicConv2d`` in plain PyTorch (differentiable).

``dynamic_conv2d_reference`` folds the batch into convolution groups (one conv call for
the whole batch); ``per_sample_dynamic_conv2d`` is the naive loop (one ``F.conv2d`` per
sample) that tests and adapters use as ground truth.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def aggregate_kernels(attention: Tensor, weight: Tensor, spatial: Optional[Tensor] = None) -> Tensor:
    """Per-sample kernels ``[N, M, C/G, kH, kW]`` from ``A [N,K]|[N,K,M]``, ``W [K,M,C/G,kH,kW]``, ``S [N,kH,kW]``."""
    if attention.dim() == 2:
        kernels = torch.einsum("nk,kmcij->nmcij", attention, weight)
    else:
        kernels = torch.einsum("nkm,kmcij->nmcij", attention, weight)
    if spatial is not None:
        kernels = kernels * spatial[:, None, None, :, :]
    return kernels


def aggregate_bias(attention: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """Per-sample bias ``[N, M]`` from ``A`` and ``B [K, M]`` (None without bias)."""
    if bias is None:
        return None
    if attention.dim() == 2:
        return attention @ bias
    return torch.einsum("nkm,km->nm", attention, bias)


def pad_input(x: Tensor, padding: Sequence[int]) -> tuple[Tensor, tuple[int, int]]:
    """Apply ``(top, left, bottom, right)`` padding; symmetric padding is left to the conv."""
    top, left, bottom, right = padding
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


def dynamic_conv2d_reference(x: Tensor, attention: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                             spatial: Optional[Tensor] = None, stride: Sequence[int] = (1, 1),
                             padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1),
                             groups: int = 1) -> Tensor:
    """``Y [N, M, Ho, Wo]``: the contract, with the batch folded into conv groups."""
    n, c = x.shape[:2]
    m = weight.shape[1]
    kernels = aggregate_kernels(attention, weight, spatial)
    biases = aggregate_bias(attention, bias)
    x, conv_padding = pad_input(x, padding)
    y = F.conv2d(x.reshape(1, n * c, *x.shape[2:]), kernels.reshape(n * m, *kernels.shape[2:]),
                 None if biases is None else biases.reshape(n * m), tuple(stride), conv_padding,
                 tuple(dilation), groups * n)
    return y.reshape(n, m, *y.shape[2:])


def per_sample_dynamic_conv2d(x: Tensor, attention: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                              spatial: Optional[Tensor] = None, stride: Sequence[int] = (1, 1),
                              padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1),
                              groups: int = 1) -> Tensor:
    """The naive definition: for each sample, aggregate its kernel and call ``F.conv2d``."""
    outputs = []
    for i in range(x.shape[0]):
        kernel = torch.einsum("k,kmcij->mcij" if attention.dim() == 2 else "km,kmcij->mcij",
                              attention[i], weight)
        if spatial is not None:
            kernel = kernel * spatial[i]
        b = None
        if bias is not None:
            b = (attention[i][:, None] * bias).sum(0) if attention.dim() == 2 else (attention[i] * bias).sum(0)
        xi, conv_padding = pad_input(x[i:i + 1], padding)
        outputs.append(F.conv2d(xi, kernel, b, tuple(stride), conv_padding, tuple(dilation), groups))
    return torch.cat(outputs)
