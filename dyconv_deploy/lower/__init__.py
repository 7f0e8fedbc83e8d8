"""Lower stage: ONNX -> ONNX passes, one per strategy (plugin, experts, grouped, static).

:func:`lower` folds BatchNorms into the dynamic convs (:func:`fold_batchnorm`), then runs one
strategy pass; every pass is a pure ``ModelProto -> ModelProto`` function ending with
``onnx.checker`` and strict shape inference. The result's ``dyconv_deploy.strategy`` metadata
names the strategy.
"""

from typing import Callable, Optional

import onnx

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.metadata import stamp
from dyconv_deploy.lower.experts import lower_experts
from dyconv_deploy.lower.fold_bn import fold_batchnorm
from dyconv_deploy.lower.graph import with_static_batch
from dyconv_deploy.lower.grouped import STATIC_BATCH_REASON, lower_grouped
from dyconv_deploy.lower.plugin import lower_plugin
from dyconv_deploy.lower.static import EQUIVALENCE_KEY, lower_static

_PASSES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "plugin": lower_plugin,
    "experts": lower_experts,
    "grouped": lower_grouped,
    "static": lower_static,
}
STRATEGIES = tuple(_PASSES)
DEFAULT_STRATEGY = "plugin"


def lower(model: onnx.ModelProto, strategy: str = DEFAULT_STRATEGY, *,
          static_batch: Optional[int] = None) -> onnx.ModelProto:
    """Lower every ``dyconv::DynamicConv2d`` node of ``model`` with ``strategy``.

    Args:
        strategy: one of :data:`STRATEGIES`; ``grouped`` needs a static batch.
        static_batch: fix the graph's batch dimension to this size first (any strategy).
    """
    if strategy not in _PASSES:
        raise DyconvError(f"unknown lowering strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if static_batch is not None:
        model = with_static_batch(model, static_batch, strategy)
    return stamp(_PASSES[strategy](fold_batchnorm(model)), strategy=strategy)


__all__ = ["DEFAULT_STRATEGY", "EQUIVALENCE_KEY", "STATIC_BATCH_REASON", "STRATEGIES", "fold_batchnorm", "lower",
           "lower_experts", "lower_grouped", "lower_plugin", "lower_static"]
