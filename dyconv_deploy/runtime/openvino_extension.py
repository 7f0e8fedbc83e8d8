"""The OpenVINO extension library (``plugins/openvino``): build it with CMake, cache it, find it.

The library (``libdyconv_openvino.so``) converts every ``dyconv::DynamicConv2d`` node when
OpenVINO's ONNX frontend reads a graph: the project's ``MixKernels`` operation makes the
per-sample kernels, OpenVINO's own convolutions apply them. It is built against the headers
and CMake package that the ``openvino`` wheel ships, so it needs only CMake and a C++17
compiler. :func:`extension_library` returns a library for the installed OpenVINO: the one in
``DYCONV_OPENVINO_EXTENSION`` when set, else a cached build keyed by the sources and the
OpenVINO version (built on first use, under a lock, into a temporary folder that is renamed
into place only when the build succeeded).
"""

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from dyconv_deploy.cache import default_cache_dir
from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.native import cmake_build
from dyconv_deploy.ops.cuda import plugins_dir

LIBRARY_NAME = "libdyconv_openvino.so"
LIBRARY_ENV = "DYCONV_OPENVINO_EXTENSION"
SOURCE_SUFFIXES = (".cpp", ".hpp", ".txt")


def extension_sources() -> Path:
    """``plugins/openvino`` (CMakeLists.txt and the C++ sources)."""
    return plugins_dir() / "openvino"


def openvino_cmake_dir() -> Path:
    """The ``cmake/`` folder of the installed ``openvino`` wheel (``OpenVINO_DIR`` for CMake)."""
    openvino = require("openvino", for_="the OpenVINO extension")
    folder = Path(openvino.__file__).parent / "cmake"
    if not (folder / "OpenVINOConfig.cmake").is_file():
        raise DyconvError(f"this openvino package has no CMake package at {folder}: the extension is built against "
                          "the PyPI wheel's headers (pip install openvino)")
    return folder


def build_extension(output_dir: str | os.PathLike, *, native: bool = True) -> Path:
    """Configure and build ``plugins/openvino`` into ``output_dir``; returns the library path.

    Args:
        output_dir: CMake build folder; the log goes to ``build.log`` there.
        native: compile for this CPU (``-march=native``); off for a library shipped to other machines.
    Raises:
        DyconvError: no cmake or compiler, or the build failed (the message names the log).
    """
    build = Path(output_dir)
    log = cmake_build(extension_sources(), build, {"OpenVINO_DIR": str(openvino_cmake_dir()),
                                                   "DYCONV_NATIVE_ARCH": "ON" if native else "OFF",
                                                   "CMAKE_BUILD_TYPE": "Release"}, "the OpenVINO extension", "3.18")
    library = build / LIBRARY_NAME
    if not library.is_file():
        raise DyconvError(f"the OpenVINO extension build wrote no {LIBRARY_NAME}; see {log}")
    try:  # a library OpenVINO cannot load (wrong ABI, missing symbol) fails here, not at the first model
        require("openvino", for_="the OpenVINO extension").Core().add_extension(str(library))
    except RuntimeError as exc:
        raise DyconvError(f"OpenVINO cannot load the extension it just built ({library}): "
                          f"{str(exc).strip().splitlines()[-1]}") from exc
    return library


def build_key() -> str:
    """Hash of the extension's sources and the installed OpenVINO version (a new either means a new build)."""
    openvino = require("openvino", for_="the OpenVINO extension")
    digest = hashlib.sha256(openvino.__version__.encode())
    for path in sorted(extension_sources().iterdir()):
        if path.suffix in SOURCE_SUFFIXES:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def extension_library(cache_dir: str | os.PathLike | None = None) -> Path:
    """The extension for the installed OpenVINO: ``$DYCONV_OPENVINO_EXTENSION``, else the cached build
    (built now when missing; a failed build leaves nothing behind)."""
    if os.environ.get(LIBRARY_ENV):
        library = Path(os.environ[LIBRARY_ENV])
        if not library.is_file():
            raise DyconvError(f"{LIBRARY_ENV}={library}: no such file (build one with: dyconv-deploy build-plugin "
                              "--target openvino)")
        return library
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"openvino-extension-{build_key()}"
    library = target / LIBRARY_NAME
    if library.is_file():
        return library
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".openvino-extension.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if not library.is_file():
            scratch = Path(tempfile.mkdtemp(prefix=".openvino-build-", dir=root))
            try:
                build_extension(scratch)
                os.replace(scratch, target)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
    return library
