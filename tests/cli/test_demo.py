"""``dyconv-deploy demo``: a failed verification stops it before the bench, with exit code 1."""

from dyconv_deploy.cli.main import main
from dyconv_deploy.tolerance import TOLERANCES, Tolerance


def test_failed_verification_exits_1_before_the_bench(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYCONV_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(atol=0.0, rtol=0.0))  # no float graph matches exactly
    assert main(["demo", "--sample", "tiny_dynamic", "-o", str(tmp_path / "out"), "--batch", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and "FAILED" in captured.err
    assert "│ verify" in captured.out and "✗" in captured.out
    assert (tmp_path / "out" / "plugin.onnx").is_file() and not (tmp_path / "out" / "bench.json").exists()
