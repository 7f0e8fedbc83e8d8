"""Dynamic ReLU of Islanna/DynamicReLU (``DyReLUA``, ``DyReLUB``) -> canonical :class:`~dyconv_deploy.nn.DyReLU`.

Their hyper function is ours (``GAP -> fc1 -> ReLU -> fc2 -> 2 sigmoid - 1``), with
coefficients ``theta * lambdas + init_v``; only the layout of ``fc2``'s outputs differs
(``[C, 2, k]`` for mode B against our ``[2, k, C]``), so ``fc2``'s rows are permuted. DyReLU
has no convolution with a dynamic weight: it exports as ordinary ops either way; converting
gives one implementation for inspect and the exporters. Per-piece lambdas that are not
constant within slopes and intercepts are not representable and are left unconverted.
"""

import copy

import torch
from torch import nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.nn import DyReLU

_MODES = {"DyReLUA": "A", "DyReLUB": "B"}


@register
class IslannaDyReLUAdapter(Adapter):
    family = "islanna_dyrelu"

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        if type(module).__name__ not in _MODES or getattr(module, "conv_type", None) != "2d" \
                or not all(hasattr(module, a) for a in ("k", "channels", "lambdas", "init_v", "fc1", "fc2")):
            return False
        k, lambdas = module.k, module.lambdas
        return bool((lambdas[:k] == lambdas[0]).all() and (lambdas[k:] == lambdas[k]).all())

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> DyReLU:
        k, c = module.k, module.channels
        mode = _MODES[type(module).__name__]
        canonical = DyReLU(c, mode=mode, k=k, lambda_a=float(module.lambdas[0]), lambda_b=float(module.lambdas[k]))
        canonical.fc1 = copy.deepcopy(module.fc1)
        canonical.fc2 = copy.deepcopy(module.fc2)
        if mode == "B":  # rows [C, 2, k] -> [2, k, C]
            with torch.no_grad():
                hidden = canonical.fc2.in_features
                canonical.fc2.weight.copy_(module.fc2.weight.reshape(c, 2, k, hidden).permute(1, 2, 0, 3)
                                           .reshape(-1, hidden))
                canonical.fc2.bias.copy_(module.fc2.bias.reshape(c, 2, k).permute(1, 2, 0).reshape(-1))
        canonical.init_a.copy_(module.init_v[:k])
        canonical.init_b.copy_(module.init_v[k:])
        return canonical
