"""Killed runs leave the previous file or a complete new one, never a truncated one, and no temp file.

A child process rewrites a 16 MB ONNX model in a loop with :func:`save_onnx` (the writer of every
export) under the CLI's signal handler, and is killed at a few moments; one real
``dyconv-deploy export`` is terminated too, to check the CLI's handler and exit code.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

SIZE = 4 << 20  # float32 values: a 16 MB model, one write takes tens of milliseconds
WRITER = f"""
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from dyconv_deploy.io.artifacts import cleanup_on_signals, save_onnx

def model(scale):
    weight = numpy_helper.from_array(np.full({SIZE}, scale, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "scaled",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [{SIZE}])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [{SIZE}])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

models = [model(2.0), model(3.0)]
with cleanup_on_signals():
    print("ready", flush=True)
    for i in range(10 ** 6):
        save_onnx(models[i % 2], sys.argv[1], external_data_threshold=int(sys.argv[2]))
"""


def _check_old_or_complete(target, old: bytes) -> None:
    data = target.read_bytes()
    if data == old:
        return
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert weight.shape == (SIZE,) and np.unique(weight).tolist() in ([2.0], [3.0])


@pytest.mark.parametrize("external, moments", [
    (False, [(signal.SIGKILL, 0.0), (signal.SIGKILL, 0.1), (signal.SIGINT, 0.05)]),
    (True, [(signal.SIGKILL, 0.05), (signal.SIGTERM, 0.1)]),
], ids=["one-file", "external-data"])
def test_a_writer_killed_at_any_moment_leaves_the_old_or_a_complete_model(tmp_path, external, moments):
    """``moments``: (signal, seconds after the writer started) of each kill, one writer each."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    threshold = "0" if external else str(1 << 31)
    for signum, delay in moments:
        old = target.read_bytes()
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), threshold], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(delay)
        child.send_signal(signum)
        assert child.wait(timeout=60) != 0
        _check_old_or_complete(target, old)
        if signum != signal.SIGKILL:  # caught: nothing half-written stays behind
            leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".model.onnx.{child.pid}.")]
            assert leftovers == [], (signal.Signals(signum).name, leftovers)
    data_files = [p for p in tmp_path.iterdir() if p.suffix == ".data"]
    assert len(data_files) <= (2 if external else 0)  # the model's, and at most one a kill left between renames


def test_a_terminated_export_exits_143_and_keeps_the_old_file(tmp_path):
    """Without the CLI's handler SIGTERM would end the process at once (return code -15)."""
    target = tmp_path / "tiny.onnx"
    target.write_bytes(b"old model")
    child = subprocess.Popen([sys.executable, "-m", "dyconv_deploy.cli.main", "export", "sample:tiny_dynamic",
                              "-o", str(target), "--exporter", "torchscript", "--opset", "17"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    _wait_for_the_cli_handler(child.pid)
    time.sleep(0.5)  # importing torch and exporting: the command is running, before its write
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143 and b"Traceback" not in err
    assert target.read_bytes() == b"old model" and [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]


def _wait_for_the_cli_handler(pid: int, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` catches SIGTERM: the CLI has installed its handler (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            caught = int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.05)
    raise AssertionError("the CLI did not install its signal handler")
