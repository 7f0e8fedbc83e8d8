"""Export stage: canonical model -> ONNX with one ``dyconv::DynamicConv2d`` node per dynamic conv, and its check.

``export_onnx`` (:mod:`.onnx_export`); the checker and contract shapes of a graph are
:mod:`.graph_check`. Comparing a graph's outputs with PyTorch is :mod:`dyconv_deploy.verify`, and
the ``export`` / ``verify`` pipelines that drive every stage are in :mod:`dyconv_deploy.workflow`.
Names are imported on first use, so the CLI can read :mod:`.settings` without importing torch.
"""

from importlib import import_module

_API = {
    "EXPORTERS": "onnx_export", "ExportError": "onnx_export", "check_model": "onnx_export",
    "contract_nodes": "onnx_export", "export_onnx": "onnx_export",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_API[name]}"), name)
