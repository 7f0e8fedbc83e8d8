"""``build-engine`` on a machine without TensorRT: one-line errors and exit code 2."""

import pytest

from dyconv_deploy.cli.main import main
from dyconv_deploy.deps import available


@pytest.mark.skipif(available("tensorrt"), reason="tensorrt is importable here")
def test_without_tensorrt_it_says_what_to_install(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["build-engine", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'dyconv-deploy[trt]'" in err
    assert not (tmp_path / "m.engine").exists()


def test_bad_shapes_are_rejected_before_tensorrt_is_needed(tmp_path, capsys):
    assert main(["build-engine", str(tmp_path / "m.onnx"), "--shapes", "input:1x3,2x3"]) == 2
    assert "cannot read --shapes 'input:1x3,2x3'" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    assert main(["build-engine", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-batch" in out and "default: 32" in out and "timing.cache" in out
