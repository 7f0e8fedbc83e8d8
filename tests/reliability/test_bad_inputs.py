"""Every bad input gets one line on stderr and exit 2, without a traceback, and leaves existing outputs alone.

Each row of :data:`CASES` runs one command in-process (``main(argv)``) against files made once per
module (:func:`inputs`): a factory file, checkpoints (empty, truncated, mismatched), ONNX files
(not ONNX, empty, and a valid export whose ``dyconv`` nodes are then broken). Before each run the
output folder holds ``x.onnx``; afterwards it must hold exactly that file, byte-identical.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from dyconv_deploy.cli.main import main
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.io.artifacts import save_onnx
from dyconv_deploy.lower import lower
from dyconv_deploy.samples import create_sample

STANDINS = Path(__file__).resolve().parents[1] / "convert"
MODELS = f'''
import sys
import torch
from torch import nn
sys.path.insert(0, {str(STANDINS)!r})
from standins.seed_dynamic_conv import DynamicConv2D


def boom():
    raise RuntimeError("num_classes must be positive")


def not_a_module():
    return 42


def small():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def reflect():
    return nn.Sequential(DynamicConv2D(8, 4, 3, padding=1, padding_mode="reflect"))
'''
OLD = b"previous model"
FAST = "--exporter torchscript --opset 17"

# (id, command with {d} = the inputs folder and {out} = the protected output file, phrase in stderr).
# The phrase is a regular expression.
CASES = [
    ("missing-factory-file", "inspect {d}/nothere.py:build", "model file not found: .*nothere.py"),
    ("unknown-factory", "inspect {d}/models.py:nofn", "has no callable 'nofn'; callables there: .*boom"),
    ("unknown-sample", "inspect sample:nope", "unknown sample 'nope'; known samples: .*tiny_dynamic"),
    ("factory-raises", "export {d}/models.py:boom -o {out}",
     "the factory .*models.py:boom raised RuntimeError: num_classes must be positive"),
    ("factory-returns-no-module", "inspect {d}/models.py:not_a_module", "returned int, not a torch.nn.Module"),
    ("missing-checkpoint", "inspect {d}/missing.pt --arch {d}/models.py:small", "checkpoint not found"),
    ("empty-checkpoint", "export {d}/empty.pt --arch {d}/models.py:small -o {out}", r"empty.pt is empty \(0 bytes\)"),
    ("truncated-checkpoint", "inspect {d}/truncated.pt --arch {d}/models.py:small",
     "cannot read checkpoint .*truncated.pt .*PytorchStreamReader"),
    ("garbage-pickle-trusted", "inspect {d}/garbage.pt --arch {d}/models.py:small --trust-pickle",
     "cannot read checkpoint .*garbage.pt .*UnpicklingError"),
    ("arch-returns-no-module", "inspect {d}/good.pt --arch {d}/models.py:not_a_module",
     "not_a_module returned int, not a torch.nn.Module"),
    ("garbage-program", "inspect {d}/garbage.pt2", "cannot load torch.export program .*garbage.pt2"),
    ("state-dict-mismatch", "inspect {d}/mismatch.pt --arch {d}/models.py:small",
     r"does not fit the architecture: missing \(1\): 0.bias; unexpected \(1\): 9.bias; shape mismatch"),
    ("input-shape-syntax", "inspect sample:tiny_dynamic --input-shape 1x3xtwo", "bad input shape '1x3xtwo'"),
    ("input-shape-rank", "bench sample:tiny_dynamic --input-shape 1x3x32", "must be N x C x H x W, got 1x3x32"),
    ("input-shape-rejected", f"export sample:tiny_dynamic -o {{out}} --input-shape 1x5x32x32 {FAST}",
     r"rejects input 1x5x32x32: features.0 \(Conv2d\) .*to have 3 channels, but got 5 channels"),
    ("unsupported-layer-config", "inspect {d}/models.py:reflect --input-shape 1x8x16x16",
     "convert: 0: DynamicConv2D with padding_mode='reflect' cannot be converted"),
    ("not-onnx", "verify sample:tiny_dynamic {d}/garbage.onnx", "cannot read .*garbage.onnx as ONNX"),
    ("empty-onnx", "triton-repo {d}/empty.onnx -o {out}.repo", r"empty.onnx is empty \(0 bytes\)"),
    ("missing-onnx", "verify sample:tiny_dynamic {d}/missing.onnx", "ONNX file not found"),
    ("dyconv-input-count", "verify sample:tiny_dynamic {d}/two_inputs.onnx",
     "fails the ONNX checker: .*DynamicConv2d.* has input size 2 not in range"),
    ("dyconv-attention-shape", "verify sample:tiny_dynamic {d}/wrong_k.onnx",
     r"breaks the dyconv::DynamicConv2d contract: A is \[N, 4\] but W \[5, 16, 8, 3, 3\] needs \[N, 5\]"),
    ("dyconv-bias-rank", "verify sample:tiny_dynamic {d}/bias_rank.onnx",
     r"breaks the dyconv::DynamicConv2d contract: B has rank 1 \(\[64\]\), expected 2"),
    ("model-does-not-fit-file", "verify {d}/models.py:small {d}/tiny.onnx",
     r"output 'output' at batch 1 has shape \[1, 10\] in the ONNX file \(on reference\) but \[1, 4, 30, 30\] "
     r"in the PyTorch model"),
    ("output-is-a-folder", f"export sample:tiny_dynamic -o {{d}} {FAST}", "it is a folder; give a file name"),
    ("output-under-a-file", f"export sample:tiny_dynamic -o {{out}}/x.onnx {FAST}", "x.onnx is a file, not a folder"),
    ("repo-under-a-file", "triton-repo {d}/tiny.onnx -o {out}", "x.onnx is a file, not a folder"),
    ("demo-under-a-file", "demo --sample tiny_dynamic -o {out} --batch 1 --iterations 1 --warmup 0 --engine ort-cpu",
     "x.onnx is a file, not a folder"),
    ("batch-zero", "verify sample:tiny_dynamic {d}/tiny.onnx --batch 0", "bad batch list '0'"),
    ("bench-strategy", "bench sample:tiny_dynamic --strategy plugin,bogus", "unknown strategy bogus"),
    ("bench-iterations", "bench sample:tiny_dynamic --iterations 0", "iterations >= 1"),
    ("verify-backend", "verify sample:tiny_dynamic {d}/tiny.onnx --backend nope", "unknown verify backend 'nope'"),
    ("preferred-batch", "triton-repo {d}/tiny.onnx -o {out}.repo --preferred-batch 8,x", "--preferred-batch '8,x'"),
    ("engine-missing", "build-engine {d}/missing.onnx -o {out}.engine",
     "ONNX file not found|needs the 'tensorrt' package"),
]
# Usage errors (click: a usage line, then the error): exit 2 and the phrase, over a few lines.
USAGE_CASES = [
    ("export-strategy", "export sample:tiny_dynamic -o {out} --strategy bogus", "Invalid value for '--strategy'"),
    ("missing-output", "export sample:tiny_dynamic", "Missing option '--output'"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The folder of bad (and a few good) input files the commands read."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "models.py").write_text(MODELS)
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(small.state_dict(), d / "good.pt")
    good = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[:len(good) // 2])
    (d / "empty.pt").write_bytes(b"")
    torch.save({"0.weight": torch.zeros(5, 3, 3, 3), "9.bias": torch.zeros(4)}, d / "mismatch.pt")
    (d / "garbage.pt").write_bytes(b"\x80\x04garbage, not a pickle")
    (d / "garbage.pt2").write_bytes(b"not a program")
    (d / "garbage.onnx").write_bytes(b"this is not onnx at all")
    (d / "empty.onnx").write_bytes(b"")
    model = lower(export_onnx(create_sample("tiny_dynamic"), torch.randn(1, 3, 32, 32), exporter="torchscript",
                              opset=17), "plugin")  # as `export` writes it: batch norms folded into expert biases
    onnx.save(model, str(d / "tiny.onnx"))
    _break(model, d / "two_inputs.onnx", _drop_w_and_b)
    _break(model, d / "wrong_k.onnx", _one_more_expert)
    _break(model, d / "bias_rank.onnx", _flat_bias)
    return d


def _break(model: onnx.ModelProto, path: Path, edit) -> None:
    """Save a copy of ``model`` after ``edit(node, W, B)`` changed its first dyconv node or that node's W and B."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    node = contract_nodes(broken)[0]
    initializers = {t.name: t for t in broken.graph.initializer}
    edit(node, initializers[node.input[2]], initializers[node.input[3]])
    onnx.save(broken, str(path))


def _drop_w_and_b(node, w, b):
    del node.input[2:]


def _one_more_expert(node, w, b):
    for tensor in (w, b):
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(np.concatenate([array, array[:1]]), tensor.name))


def _flat_bias(node, w, b):
    b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b).reshape(-1), b.name))


def _run(command: str, inputs: Path, tmp_path: Path, capsys) -> tuple[int, str, Path]:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.onnx"
    out.write_bytes(OLD)
    code = main(shlex.split(command.format(d=inputs, out=out)))
    err = capsys.readouterr().err
    assert [p.name for p in out_dir.iterdir()] == ["x.onnx"] and out.read_bytes() == OLD  # nothing else written
    return code, err, out


@pytest.mark.parametrize("command, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_exit_2(inputs, tmp_path, capsys, command, phrase):
    code, err, _ = _run(command, inputs, tmp_path, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(phrase, err), err


@pytest.mark.parametrize("command, phrase", [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_a_usage_error_exits_2_without_a_traceback(inputs, tmp_path, capsys, command, phrase):
    code, err, _ = _run(command, inputs, tmp_path, capsys)
    assert code == 2 and phrase in err and "Traceback" not in err, err


def test_verbose_raises_with_the_cause_for_its_traceback(inputs):
    with pytest.raises(DyconvError) as info:
        main(["-v", "inspect", f"{inputs}/models.py:boom"])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_verify_reads_a_model_whose_tensors_are_external_data(inputs, tmp_path, capsys):
    """The layout ``save_onnx`` gives models of 2 GiB and more (forced here for a small one)."""
    target = tmp_path / "tiny.onnx"
    save_onnx(onnx.load(str(inputs / "tiny.onnx")), target, external_data_threshold=0)
    assert len(list(tmp_path.glob("tiny.onnx.*.data"))) == 1
    assert main(["verify", "sample:tiny_dynamic", str(target), "--batch", "2"]) == 0, capsys.readouterr().err
