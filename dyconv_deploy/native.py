"""Building the native code of ``plugins/`` with CMake: one configure + build, logged to a file."""

import os
import shutil
import subprocess
from pathlib import Path

from dyconv_deploy.errors import DyconvError


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
