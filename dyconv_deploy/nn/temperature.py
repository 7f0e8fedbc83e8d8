"""Softmax temperature annealing for attention-based dynamic convs.

DynamicConv (Chen et al. 2020) trains with a near-uniform attention early on: the
temperature falls linearly from 30 to 1 over the first 10 epochs and stays at 1.
"""

from torch import nn


def annealed_temperature(epoch: float, start: float = 30.0, end: float = 1.0, epochs: float = 10.0) -> float:
    """Temperature at ``epoch`` (fractional epochs allowed): linear from ``start`` to ``end``."""
    if epochs <= 0 or epoch >= epochs:
        return end
    return start + (end - start) * max(epoch, 0.0) / epochs


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every layer in ``model`` that has one; returns how many."""
    layers = [m for m in model.modules() if callable(getattr(m, "set_temperature", None))]
    for layer in layers:
        layer.set_temperature(temperature)
    return len(layers)
