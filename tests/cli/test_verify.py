"""``dyconv-deploy verify``: an exported file against its model; exit 1 for a different model."""

import sys

import numpy as np
import pytest
import torch
from guards import assert_attention_varies, assert_fails, rolled_attention
from rich.console import Console

from dyconv_deploy.cli.main import main
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.report import comparison_table
from dyconv_deploy.io import load_model
from dyconv_deploy.tolerance import Tolerance, compare
from dyconv_deploy.verify import verify_inputs, verify_onnx

TINY = "sample:tiny_dynamic"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "tiny.onnx"
    export_onnx(load_model(TINY), torch.randn(1, 3, 32, 32), path, exporter="torchscript", opset=17)
    return path


def test_matching_model_passes_at_each_batch(tiny_onnx, capsys):
    assert main(["verify", TINY, str(tiny_onnx), "--batch", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "ONNX (reference) vs PyTorch eager" in out
    assert "output@batch1" in out and "output@batch3" in out and "FAIL" not in out


def test_verify_inputs_give_each_sample_its_own_attention_and_a_mix_up_fails(tiny_onnx):
    model, shape = load_model(TINY), (1, 3, 32, 32)
    assert_attention_varies(model, verify_inputs(shape, [3])[0])
    with rolled_attention(model):
        assert_fails(verify_onnx(model, tiny_onnx, shape, [3]), "giving sample n sample n-1's attention")


def test_different_weights_fail_with_exit_1_and_the_table(tiny_onnx, tmp_path, capsys):
    state = load_model(TINY).state_dict()
    state = {k: v + 0.1 if v.is_floating_point() and k.endswith("weight") else v for k, v in state.items()}
    torch.save(state, tmp_path / "other.pt")
    assert main(["verify", str(tmp_path / "other.pt"), str(tiny_onnx), "--arch", TINY, "--batch", "2"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "over tolerance" in captured.err


def test_missing_onnx_file_is_a_user_error(tmp_path, capsys):
    assert main(["verify", TINY, str(tmp_path / "none.onnx")]) == 2
    assert "ONNX file not found" in capsys.readouterr().err


def test_plugin_graph_on_onnx_runtime_runs_the_expanded_node(tiny_onnx, capsys):
    assert main(["verify", TINY, str(tiny_onnx), "--backend", "ort-cpu", "--batch", "1,5"]) == 0
    out = capsys.readouterr().out
    assert "ONNX (ort-cpu) vs PyTorch eager" in out and "output@batch5" in out and "FAIL" not in out


@pytest.mark.parametrize("backend, file_name, message", [
    ("trt", "tiny.onnx", "the trt backend cannot run an ONNX graph"),
    ("ort-cpu", "tiny.engine", "the ort-cpu backend cannot run an engine"),
    ("onnx2", "tiny.onnx", "unknown verify backend 'onnx2'"),
])
def test_backend_that_cannot_run_the_file_is_a_user_error(tiny_onnx, tmp_path, capsys, backend, file_name, message):
    path = tmp_path / file_name
    path.write_bytes(tiny_onnx.read_bytes())
    assert main(["verify", TINY, str(path), "--backend", backend]) == 2
    assert message in capsys.readouterr().err


def test_engine_is_verified_on_tensorrt_which_says_what_to_install_when_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, even where it is installed
    monkeypatch.setenv("COLUMNS", "250")  # one line per table row
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not a plan")
    assert main(["verify", TINY, str(engine)]) == 2
    captured = capsys.readouterr()
    assert "pip install 'dyconv-deploy[trt]'" in captured.err
    assert "a TensorRT engine (its sidecar is checked when it loads)" in captured.out  # no ONNX checker


def test_the_error_table_measures_error_against_the_tolerance_not_the_output():
    """An error of 5e-5 on an output near zero is half the tolerance (a relative error would be 5e4)."""
    expected = np.array([1e-9, 1.0, -2.0])
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    near_zero = compare(expected + [5e-5, 0.0, 0.0], expected, tolerance)
    assert near_zero.passed and near_zero.tolerance_used == pytest.approx(0.5, rel=1e-6)
    assert near_zero.required_atol == pytest.approx(5e-5, rel=1e-3)
    covered_by_rtol = compare(expected * (1 + 5e-4), expected, tolerance)
    assert covered_by_rtol.required_atol == 0 and covered_by_rtol.tolerance_used == pytest.approx(1e-3 / 2.1e-3)
    over = compare(expected + [0.0, 2.2e-3, 0.0], expected, tolerance)
    assert not over.passed and over.tolerance_used == pytest.approx(2.0, rel=1e-6)
    assert over.required_atol == pytest.approx(1.2e-3)
    assert compare(expected + 1e-9, expected, Tolerance(0.0, 0.0)).tolerance_used == float("inf")
    console = Console(width=200, record=True)
    console.print(comparison_table([near_zero, covered_by_rtol, over], "ort-cpu"))
    rows = [line.split("│")[1:-1] for line in console.export_text().splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row[3:]] for row in rows] == [
        ["0.5", "5e-05", "pass"], ["0.48", "0 (rtol suffices)", "pass"], ["2", "0.0012", "FAIL"]]
