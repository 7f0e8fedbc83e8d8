"""The installed ``dyconv-deploy`` script exits with main()'s code: 2 for bad input and usage, 1 for a failed check."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = shutil.which("dyconv-deploy", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("args, code, message", [
    (["inspect", "sample:no_such_sample"], 2, "error: unknown sample"),
    (["inspect"], 2, "Missing argument 'MODEL'"),
    (["--no-such-flag"], 2, "No such option: --no-such-flag"),
    (["export", "sample:tiny_dynamic", "-o", "tiny.onnx", "--exporter", "torchscript", "--opset", "17",
      "--atol", "0", "--rtol", "0", "--batch", "2"], 1, "error: "),
], ids=["bad-input", "missing-argument", "unknown-option", "failed-verification"])
def test_exit_status(tmp_path, args, code, message):
    assert SCRIPT, f"no dyconv-deploy script beside {sys.executable}: pip install -e ."
    process = subprocess.run([SCRIPT, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == code, process.stderr
    assert message in process.stderr and "Traceback" not in process.stderr
