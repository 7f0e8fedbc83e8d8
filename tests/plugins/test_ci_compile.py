"""``plugins/ci_compile.sh`` without a CUDA toolkit: red, unless ``DYCONV_CI_ALLOW_NO_CUDA=1`` (which it prints)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "ci_compile.sh"


def run_without_toolkit(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # An empty CUDA_HOME and no CUDACXX: the script must stop before configuring anything.
    base = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "DYCONV_CI_ALLOW_NO_CUDA")}
    return subprocess.run(["bash", str(SCRIPT)], env={**base, "CUDA_HOME": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_missing_toolkit_fails(tmp_path):
    run = run_without_toolkit(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"no CUDA toolkit at CUDA_HOME={tmp_path}" in run.stderr and "failing" in run.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_missing_toolkit_passes_only_when_allowed_and_says_so(tmp_path):
    run = run_without_toolkit(tmp_path, DYCONV_CI_ALLOW_NO_CUDA="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DYCONV_CI_ALLOW_NO_CUDA=1 is set" in run.stderr and "NOT compiled" in run.stderr
