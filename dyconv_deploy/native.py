"""The native sources (``plugins/``) and building them with CMake: one configure + build, logged to a file.

The sources ship in the wheel as package data of ``dyconv_deploy.native_sources`` (pyproject.toml
maps that package onto ``plugins/``), so ``build-plugin``, the OpenVINO extension and the torch
extension build from an installed wheel as from a checkout; :func:`plugins_dir` finds them.
"""

import importlib.resources
import os
import shutil
import subprocess
from pathlib import Path

from dyconv_deploy.errors import DyconvError

SOURCES_PACKAGE = "dyconv_deploy.native_sources"
PLUGINS_DIR_ENV = "DYCONV_PLUGINS_DIR"
CHECKOUT_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def plugins_dir() -> Path:
    """The native source tree (``kernels/``, ``tensorrt/``, ``torch/``, ``openvino/``, ``CMakeLists.txt``).

    In order: ``$DYCONV_PLUGINS_DIR``; the package data of an installed wheel (through
    :mod:`importlib.resources`); ``plugins/`` of the checkout this package is imported from.
    """
    candidates = [Path(os.environ[PLUGINS_DIR_ENV])] if PLUGINS_DIR_ENV in os.environ else []
    candidates += [p for p in (_installed_sources(),) if p is not None] + [CHECKOUT_PLUGINS]
    for candidate in candidates:
        if (candidate / "kernels" / "dynamic_conv.cu").is_file():
            return candidate
    raise DyconvError(f"the native sources (plugins/) were not found in: {', '.join(map(str, candidates))}; "
                      f"reinstall dyconv-deploy or set {PLUGINS_DIR_ENV} to a checkout's plugins/ folder")


def in_checkout(folder: Path) -> bool:
    """True when ``folder`` is ``plugins/`` of a checkout (a writable source tree), not installed package data."""
    return folder.resolve() == CHECKOUT_PLUGINS


def _installed_sources() -> Path | None:
    try:
        marker = importlib.resources.files(SOURCES_PACKAGE).joinpath("CMakeLists.txt")
    except ModuleNotFoundError:  # a checkout whose editable install predates the package
        return None
    return Path(str(marker)).parent  # wheels install as folders; zipped imports are not supported


def cmake_build(source: Path, build: Path, definitions: dict[str, str], what: str, minimum: str) -> Path:
    """Configure ``source`` into ``build`` with ``-D`` ``definitions``, build it; returns the log path.

    Args:
        what: what is built, for messages (e.g. ``"the plugin"``).
        minimum: the CMake version the project needs, for the message when cmake is missing.
    Raises:
        DyconvError: no cmake on PATH, or a step failed (the message names the step and the log).
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise DyconvError(f"cmake not found on PATH: building {what} needs CMake >= {minimum} (pip install cmake)")
    build.mkdir(parents=True, exist_ok=True)
    log = build / "build.log"
    configure = [cmake, "-S", str(source), "-B", str(build), *(f"-D{k}={v}" for k, v in definitions.items())]
    with log.open("w") as stream:
        for step in (configure, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 1)]):
            stream.write(f"$ {' '.join(step)}\n")
            stream.flush()
            if subprocess.run(step, stdout=stream, stderr=subprocess.STDOUT).returncode != 0:
                raise DyconvError(f"building {what} failed at `{' '.join(step[:2])} ...`; see {log}")
    return log
