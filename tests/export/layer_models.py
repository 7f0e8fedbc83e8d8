"""Single-layer models for the export tests, from the foundation tests' layer configs.

The configs and the layer factory live in ``tests/nn/test_layers.py``; they are loaded
from there by path so both suites cover the same geometries.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_foundation_layer_configs",
                                               Path(__file__).parents[1] / "nn" / "test_layers.py")
_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layers)

CONFIGS = _layers.CONFIGS
FAMILIES = tuple(_layers.LAYERS)
make_layer = _layers.make_layer
static_by_construction = _layers.static_by_construction


def input_shape(config) -> tuple[int, int, int, int]:
    """``[1, C, H, W]`` of a config (the batch is varied by the tests)."""
    return (1, config.in_channels, config.size, config.size)
