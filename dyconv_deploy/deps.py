"""Lazy access to optional heavy dependencies.

Modules never import tensorrt, matplotlib, onnxruntime's CUDA provider or the plugin
library at import time; functions call :func:`require` where they need them, so a missing
package becomes one sentence saying what to install instead of an ImportError traceback.
"""

import importlib
from types import ModuleType

from dyconv_deploy.errors import MissingDependency

# Module name -> how a user installs it.
_INSTALL_HINTS = {
    "tensorrt": "pip install 'dyconv-deploy[trt]' (TensorRT 10 or 11 with a CUDA GPU)",
    "matplotlib": "pip install matplotlib",
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu for CUDA)",
    "hypothesis": "pip install 'dyconv-deploy[test]'",
}


def require(module: str, *, for_: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` naming what needs it.

    Args:
        module: importable name, e.g. ``"tensorrt"``.
        for_: what the caller is doing, used in the message (e.g. ``"build-engine"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        raise MissingDependency(f"{for_} needs the '{module}' package, which cannot be imported ({exc}); "
                                f"install it with: {hint}") from exc


def available(module: str) -> bool:
    """True when ``module`` imports (used by skips and backend listings)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
