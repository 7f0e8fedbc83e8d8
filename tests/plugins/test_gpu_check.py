"""``benchmarks/gpu_check.sh`` on a CPU: it stops at once without a GPU, and (with a stand-in python that plays
a GPU machine) runs every step, writes one summary line per step as it goes and goes on after a failed one."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
# Succeeds at everything, reports compute capability 9.0, and fails the test step (pytest).
FAKE_GPU_PYTHON = """#!/usr/bin/env bash
case "$*" in *get_device_capability*) echo 9.0 ;; "-m pytest"*) echo "1 failed"; exit 1 ;; esac
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


def run_check(out: Path, python: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out)], env={**os.environ, "PYTHON": python, **env},
                          capture_output=True, text=True, timeout=120)


def test_without_a_gpu_it_stops_before_installing(tmp_path):
    run = run_check(tmp_path / "out", sys.executable, CUDA_VISIBLE_DEVICES="")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "gpu_check: no CUDA device visible to torch" in run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.txt"]


def fake_gpu(tmp_path: Path) -> dict:
    """A stand-in python (FAKE_GPU_PYTHON) and compute-sanitizer: the environment of a run_check on a "GPU"."""
    python = tmp_path / "python"
    python.write_text(FAKE_GPU_PYTHON)
    python.chmod(0o755)
    sanitizer = tmp_path / "cuda" / "bin" / "compute-sanitizer"
    sanitizer.parent.mkdir(parents=True)
    sanitizer.write_text("#!/usr/bin/env bash\nexit 0\n")
    sanitizer.chmod(0o755)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (Path(p) / "compute-sanitizer").exists())
    return {"python": str(python), "CUDA_HOME": str(tmp_path / "cuda"), "PATH": path}


def test_every_step_is_summarised_and_a_failure_does_not_stop_the_rest(tmp_path):
    run = run_check(tmp_path / "out", **fake_gpu(tmp_path))
    assert run.returncode == 1, run.stdout + run.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [
        "install", "build", "tests", "costmodel", "network", "bench", "sanitizer_memcheck", "sanitizer_racecheck",
        "sanitizer_synccheck", "sanitizer_initcheck"]
    assert summary[2].startswith("tests: FAILED (exit 1)") and all(" ok in " in line for line in summary[3:])


def test_unknown_step_is_refused(tmp_path):
    run = run_check(tmp_path / "out", sys.executable, GPU_CHECK_STEPS="build winograd")
    assert run.returncode == 2 and "unknown step 'winograd'" in run.stderr


def test_the_archive_holds_the_results_of_every_step_so_far(tmp_path):
    """GPU_CHECK_ARCHIVE: one .tar.gz of OUT, rewritten after each step (what a device machine brings back)."""
    archive = tmp_path / "back" / "gpu_check.tar.gz"
    archive.parent.mkdir()
    run = run_check(tmp_path / "out", **fake_gpu(tmp_path), GPU_CHECK_STEPS="install costmodel",
                    GPU_CHECK_ARCHIVE=str(archive))
    assert run.returncode == 0, run.stdout + run.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        summary = tar.extractfile("out/summary.txt").read().decode().splitlines()
    assert {"out/summary.txt", "out/install.log", "out/costmodel.log", "out/environment.txt"} <= names
    assert [line.split(":")[0] for line in summary] == ["install", "costmodel"]
    assert sorted(p.name for p in archive.parent.iterdir()) == ["gpu_check.tar.gz"]  # no temporary left
