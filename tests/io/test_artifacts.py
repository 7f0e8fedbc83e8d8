"""Atomic artifacts: umask permissions, failed writes change nothing, no temp left, ONNX external data."""

import os
import signal
import stat
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.artifacts import atomic_path, atomic_write_bytes, save_onnx


def scaled_identity(scale: float, size: int = 64) -> onnx.ModelProto:
    """``y = x * w`` with ``w`` a float32 initializer of ``size`` values equal to ``scale``."""
    weight = numpy_helper.from_array(np.full(size, scale, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "scaled",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(path, size: int = 64) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones(size, np.float32)})[0]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("write", ["bytes", "onnx", "onnx-external"])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode, write):
    umask(mask)
    target = tmp_path / "out.onnx"
    if write == "bytes":
        atomic_write_bytes(target, b"new")
    else:
        save_onnx(scaled_identity(2.0), target, external_data_threshold=0 if write == "onnx-external" else 1 << 31)
    written = sorted(tmp_path.iterdir())
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [mode] * len(written)


def _fail_rename(source, destination):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("write", [
    lambda path: atomic_write_bytes(path, b"new"),
    lambda path: save_onnx(scaled_identity(2.0), path),
    lambda path: save_onnx(scaled_identity(2.0), path, external_data_threshold=0),
], ids=["bytes", "onnx", "onnx-external"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, write):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", _fail_rename)
    with pytest.raises(DyconvError, match=r"cannot write .*out.onnx: No space left on device"):
        write(target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_an_exception_inside_the_block_removes_the_temp(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out") as temp:
        temp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_folder_target_is_a_one_line_error(tmp_path):
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(DyconvError, match="it is a folder; give a file name"):
        atomic_write_bytes(tmp_path / "out.onnx", b"new")


def test_external_data_loads_in_onnx_runtime_and_replaces_the_previous_data(tmp_path):
    target = tmp_path / "big.onnx"
    model = scaled_identity(2.0)
    save_onnx(model, target, external_data_threshold=0)
    assert model.graph.initializer[0].raw_data  # the caller's proto keeps its tensors
    first = {p.name for p in tmp_path.iterdir()}
    assert len(first) == 2 and run(target).tolist() == [2.0] * 64
    save_onnx(scaled_identity(3.0), target, external_data_threshold=0)
    second = {p.name for p in tmp_path.iterdir()}
    assert len(second) == 2 and second != first and run(target).tolist() == [3.0] * 64
    save_onnx(scaled_identity(4.0), target)  # back under the threshold: one file, the data file removed
    assert [p.name for p in tmp_path.iterdir()] == ["big.onnx"] and run(target).tolist() == [4.0] * 64


@pytest.mark.parametrize("name", ["out", "out[1]"])  # glob characters in the name are taken literally
def test_temps_of_a_killed_process_are_removed_by_the_next_write(tmp_path, name):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)  # not os.fork: this process runs engine thread pools
    dead = int(finished.stdout)
    stale = tmp_path / f".{name}.{dead}.{'0' * 16}.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / f".{name}.{os.getpid()}.{'1' * 16}.tmp"  # another write of this process, in flight
    live.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / name, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, name]


# In a fresh interpreter: in this one, earlier tests have loaded OpenVINO and ONNX Runtime, whose thread pools
# make a signal sent to the whole pytest process crash it (SIGSEGV) on CI before the handler runs.
_SIGNAL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from dyconv_deploy.io import artifacts
from dyconv_deploy.io.artifacts import atomic_path, cleanup_on_signals

folder, signum = Path(sys.argv[1]), int(sys.argv[2])
before = signal.getsignal(signum)
try:
    with cleanup_on_signals(), atomic_path(folder / "out") as temp:
        temp.write_bytes(b"partial")
        os.kill(os.getpid(), signum)
except BaseException as exc:
    print(type(exc).__name__, getattr(exc, "code", None))
print(sorted(p.name for p in folder.iterdir()), len(artifacts._IN_FLIGHT), signal.getsignal(signum) is before)
"""


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, "KeyboardInterrupt None"),
                                            (signal.SIGTERM, "SystemExit 143")])
def test_a_signal_removes_the_temps_in_flight_and_stops(tmp_path, signum, raised):
    run = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, str(tmp_path), str(int(signum))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [raised, "[] 0 True"]  # no temp left, none in flight, handler restored


def test_a_file_where_the_folder_should_be_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(DyconvError, match=r"cannot write .*notes.txt/new/out.onnx: .*notes.txt is a file, not a"):
        atomic_write_bytes(tmp_path / "notes.txt" / "new" / "out.onnx", b"new")
