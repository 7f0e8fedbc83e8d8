"""Bench stage: a dynamic model's graphs against its static twin, interleaved in one process.

``bench`` (:mod:`.core`), the graph cache (:mod:`.graphs`), timing (:mod:`.measure`) and the
table / JSON / plot (:mod:`.report`). Names are imported on first use, so the CLI can read
:data:`BACKENDS` without importing torch.
"""

from importlib import import_module

BACKENDS = ("ort-cpu", "openvino", "ort-cuda", "ort-trt", "trt", "torch", "torch-cuda")
_API = {"bench": "core", "BenchResult": "core", "Row": "core", "Stats": "measure", "CACHE_ENV": "graphs",
        "default_cache_dir": "graphs", "twin_spec": "graphs"}
__all__ = sorted([*_API, "BACKENDS"])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_API[name]}"), name)
