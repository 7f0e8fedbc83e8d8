"""The DynamicConv2d TensorRT plugin library: build it with CMake, find it, open it.

:func:`build_plugin` configures and builds ``plugins/`` (kernels + ``libdyconv_trt_plugin.so``)
with CMake and nvcc against TensorRT headers found by :func:`find_tensorrt_headers`. The
library needs no TensorRT at build or load time beyond the headers: it links cudart only and
exports ``getCreators``/``setLoggerFinder`` for ``IPluginRegistry.load_library``.
:func:`open_plugin_library` checks those exports with ctypes, so a wrong or stale file fails
here with the paths searched, not later as TensorRT's "plugin not found".
"""

import ctypes
import importlib.util
import os
import shutil
from pathlib import Path

from dyconv_deploy.cache import default_cache_dir
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.native import cmake_build, in_checkout, plugins_dir

LIBRARY_NAME = "libdyconv_trt_plugin.so"
DEFAULT_CUDA_ARCHITECTURES = "80;90"
_HEADER = "NvInferRuntime.h"
_EXPORTS = ("getCreators", "setLoggerFinder")


def default_build_dir() -> Path:
    """``plugins/build`` in a checkout (gitignored); for an installed wheel ``<cache>/tensorrt-plugin``
    (:func:`dyconv_deploy.cache.default_cache_dir`), never inside the installed package."""
    sources = plugins_dir()
    return sources / "build" if in_checkout(sources) else default_cache_dir() / "tensorrt-plugin"


def tensorrt_header_candidates(tensorrt_root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``NvInferRuntime.h``: only under ``tensorrt_root`` when it is given
    (an explicit choice is never replaced by another TensorRT); else, in order, ``TENSORRT_ROOT``,
    the ``tensorrt``/``tensorrt_libs`` pip packages, system paths, the checkout's ``third_party/tensorrt``."""
    root = tensorrt_root if tensorrt_root is not None else os.environ.get("TENSORRT_ROOT")
    roots = [Path(root)] if root else []
    if tensorrt_root is None:
        for package in ("tensorrt", "tensorrt_libs"):
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                roots.append(Path(spec.origin).parent)
        roots += [Path("/usr/local/tensorrt"), Path("/usr"), plugins_dir().parent / "third_party" / "tensorrt"]
    candidates = []
    for root in roots:
        candidates += [root / "include", root / "include" / "x86_64-linux-gnu", root / "include" / "aarch64-linux-gnu"]
    return candidates


def find_tensorrt_headers(tensorrt_root: str | os.PathLike | None = None) -> Path:
    """The first candidate folder holding ``NvInferRuntime.h``; DyconvError listing them otherwise."""
    candidates = tensorrt_header_candidates(tensorrt_root)
    for folder in candidates:
        if (folder / _HEADER).is_file():
            return folder
    raise DyconvError(f"TensorRT headers ({_HEADER}) not found; searched: {', '.join(map(str, candidates))}. "
                      "Set TENSORRT_ROOT (or --tensorrt-root) to a TensorRT tarball or a checkout of "
                      "github.com/NVIDIA/TensorRT of the runtime's major version")


def find_nvcc() -> Path:
    """nvcc from ``CUDACXX``, ``CUDA_HOME/bin``, ``PATH`` or ``/usr/local/cuda/bin``; DyconvError otherwise."""
    candidates = [os.environ.get("CUDACXX"), os.environ.get("CUDA_HOME") and f"{os.environ['CUDA_HOME']}/bin/nvcc",
                  shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for candidate in filter(None, candidates):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise DyconvError("nvcc not found (searched CUDACXX, CUDA_HOME/bin, PATH, /usr/local/cuda/bin): building "
                      "the plugin needs the CUDA toolkit; install it or set CUDA_HOME")


def build_plugin(build_dir: str | os.PathLike | None = None, tensorrt_root: str | os.PathLike | None = None,
                 cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES) -> Path:
    """Configure and build ``plugins/`` with CMake; returns the opened-and-checked library path.

    Args:
        build_dir: CMake build folder (default :func:`default_build_dir`); the log goes to ``build.log`` there.
        tensorrt_root: TensorRT tree with ``include/``; default: searched, see :func:`tensorrt_header_candidates`.
        cuda_architectures: CMake ``CUDA_ARCHITECTURES`` list, e.g. ``"80;90"`` (A100, H100).
    """
    nvcc = find_nvcc()
    headers = find_tensorrt_headers(tensorrt_root)
    build = Path(build_dir) if build_dir else default_build_dir()
    cmake_build(plugins_dir(), build, {"CMAKE_CUDA_COMPILER": str(nvcc), "CMAKE_CUDA_ARCHITECTURES": cuda_architectures,
                                       "TENSORRT_INCLUDE_DIR": str(headers)}, "the plugin", "3.24")
    library = build / LIBRARY_NAME
    open_plugin_library(library)
    return library


def locate_plugin_library(search: list[str | os.PathLike] | None = None) -> Path:
    """``libdyconv_trt_plugin.so`` in ``search`` (files or folders; default: ``DYCONV_PLUGIN_LIBRARY``,
    then :func:`default_build_dir`); DyconvError listing the paths searched."""
    if search is None:
        search = [p for p in (os.environ.get("DYCONV_PLUGIN_LIBRARY"),) if p] + [default_build_dir()]
    searched = [Path(p) if Path(p).suffix == ".so" else Path(p) / LIBRARY_NAME for p in search]
    for path in searched:
        if path.is_file():
            return path
    raise DyconvError(f"plugin library not found; searched: {', '.join(map(str, searched))}. "
                      "Build it with: dyconv-deploy build-plugin")


def open_plugin_library(path: str | os.PathLike) -> ctypes.CDLL:
    """Load the library with ctypes and check it exports ``getCreators``/``setLoggerFinder`` with one creator."""
    path = Path(path)
    if not path.is_file():
        raise DyconvError(f"plugin library not found: {path}. Build it with: dyconv-deploy build-plugin")
    try:
        library = ctypes.CDLL(str(path.resolve()))
    except OSError as exc:
        raise DyconvError(f"cannot load the plugin library {path}: {exc}") from exc
    missing = [name for name in _EXPORTS if not hasattr(library, name)]
    if missing:
        raise DyconvError(f"{path} is not a TensorRT plugin library: it does not export {', '.join(missing)}")
    count = ctypes.c_int32(0)
    library.getCreators.restype = ctypes.c_void_p
    library.getCreators(ctypes.byref(count))
    if count.value != 1:
        raise DyconvError(f"{path} registers {count.value} plugin creators; expected the DynamicConv2d creator only")
    return library
