"""``torch.ops.dyconv.dynamic_conv2d``: the contract as one opaque torch op.

Every layer in :mod:`dyconv_deploy.nn` calls this op, so ``torch.export`` and both ONNX
exporters see a single node per dynamic conv. The CPU/default kernel is the reference
math; the fake kernel gives shapes for symbolic batches; autograd differentiates the
reference. A CUDA kernel can be registered over it (``plugins/torch``).
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from dyconv_deploy.ops.contract import TORCH_OP, output_size
from dyconv_deploy.ops.reference import dynamic_conv2d_reference

_SCHEMA = ("(Tensor x, Tensor attention, Tensor weight, Tensor? bias, Tensor? spatial, SymInt[] stride, "
           "SymInt[] padding, SymInt[] dilation, SymInt groups) -> Tensor")

# Defined with torch.library's low-level calls, not @custom_op: custom_op wraps every kernel in
# torch._disable_dynamo, whose first call imports torch._dynamo (~1 s, and ~0.4 s more at exit)
# in processes that never compile. The op is opaque to torch.compile and torch.export either way.
torch.library.define(TORCH_OP, _SCHEMA)


@torch.library.impl(TORCH_OP, "CompositeExplicitAutograd")
def _dynamic_conv2d_kernel(x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    return dynamic_conv2d_reference(x, attention, weight, bias, spatial, stride, padding, dilation, groups)


@torch.library.register_fake(TORCH_OP)
def _(x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    n, _, h, w = x.shape
    _, m, _, kh, kw = weight.shape
    ho = output_size(h, padding[0], padding[2], kh, stride[0], dilation[0])
    wo = output_size(w, padding[1], padding[3], kw, stride[1], dilation[1])
    return x.new_empty((n, m, ho, wo))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.has = tuple(t is not None for t in inputs[:5])
    ctx.conv_args = inputs[5:]


def _backward(ctx, grad_output):
    saved = ctx.saved_tensors
    present = [t for t in saved if t is not None]

    def forward(*tensors):
        it = iter(tensors)
        args = [next(it) if has else None for has in ctx.has]
        return dynamic_conv2d_reference(*args, *ctx.conv_args)

    _, vjp = torch.func.vjp(forward, *present)
    grads = iter(vjp(grad_output))
    return tuple(next(grads) if has else None for has in ctx.has) + (None,) * 4


torch.library.register_autograd(TORCH_OP, _backward, setup_context=_setup_context)
_OP = torch.ops.dyconv.dynamic_conv2d.default


def dynamic_conv2d(x: Tensor, attention: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   spatial: Optional[Tensor] = None, stride: Sequence[int] = (1, 1),
                   padding: Sequence[int] = (0, 0, 0, 0), dilation: Sequence[int] = (1, 1),
                   groups: int = 1) -> Tensor:
    """Dynamic convolution per the contract (see :mod:`dyconv_deploy.ops.contract`).

    Args:
        x: ``[N, C, H, W]``. attention: ``[N, K]`` or ``[N, K, M]``.
        weight: ``[K, M, C/groups, kH, kW]``. bias: ``[K, M]`` or None.
        spatial: ``[N, kH, kW]`` or None. padding: ``(top, left, bottom, right)``.
    Returns:
        ``[N, M, Ho, Wo]``.
    """
    return _OP(x, attention, weight, bias, spatial, list(stride), list(padding), list(dilation), int(groups))
