"""The installed ``dyconv-deploy`` script exits with main()'s code: 2 for bad input and usage, 1 for a failed check."""

import os
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


def test_a_successful_export_flushes_everything_and_never_imports_dynamo(tmp_path):
    """The script ends with ``os._exit`` (no interpreter teardown): the whole checklist still reaches a pipe
    and the model is complete; and an export never pays torch._dynamo's import (~1 s). (rich flushes its
    own output, so a missing final flush in ``run`` is not caught here; the dynamo check is.)"""
    import onnx

    process = subprocess.run([SCRIPT, "export", "sample:tiny_dynamic", "-o", "tiny.onnx"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert process.returncode == 0, process.stderr[-2000:]
    assert "verify" in process.stdout and process.stdout.rstrip().endswith("┘"), process.stdout
    onnx.checker.check_model(onnx.load(tmp_path / "tiny.onnx"))
    imported = {line.rpartition("|")[2].strip() for line in process.stderr.splitlines() if "import time:" in line}
    assert "torch" in imported and "torch._dynamo" not in imported


@pytest.mark.parametrize("setting, expected", [(None, "False"), ("1", "True")])
def test_the_command_line_turns_numpys_huge_pages_off_unless_asked(setting, expected):
    env = {key: value for key, value in os.environ.items() if key != "NUMPY_MADVISE_HUGEPAGE"}
    if setting is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = setting
    code = "import dyconv_deploy.cli.main, numpy; print(numpy._core.multiarray._get_madvise_hugepage())"
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert process.stdout.strip() == expected, process.stderr


@pytest.mark.parametrize("columns, widest", [(None, range(81, 161)), ("70", range(0, 71))],
                         ids=["piped-defaults-to-160", "COLUMNS-wins"])
def test_tables_piped_to_a_log_are_not_folded_into_80_columns(tmp_path, columns, widest):
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    process = subprocess.run([SCRIPT, "inspect", "sample:tiny_dynamic"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=env)
    assert process.returncode == 0, process.stderr[-2000:]
    assert max(len(line) for line in process.stdout.splitlines()) in widest
