"""``dyconv-deploy export``: the tiny sample end to end, the checklist, and exit codes 0 / 1 / 2."""

import re

import onnx
import pytest

from dyconv_deploy.cli.main import main
from dyconv_deploy.export import contract_nodes
from dyconv_deploy.export.metadata import read_metadata

TINY = "sample:tiny_dynamic"
FAST = ["--exporter", "torchscript", "--opset", "17"]  # the dynamo path is covered by tests/export


def test_export_writes_a_verified_dynamic_batch_plugin_graph(tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--batch", "1,3"]) == 0
    printed = capsys.readouterr().out
    for stage in ("load", "convert", "export", "checker", "lower", "write", "verify"):
        assert f"│ {stage}" in printed and "✗" not in printed
    assert "output@batch1" in printed and "output@batch3" in printed
    model = onnx.load(str(out))
    assert len(contract_nodes(model)) == 4
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert read_metadata(model)["strategy"] == "plugin"


def test_static_strategy_skips_verification_and_says_why(tmp_path, capsys):
    out = tmp_path / "static.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--strategy", "static"]) == 0
    assert "not numerically equivalent" in capsys.readouterr().out
    assert contract_nodes(onnx.load(str(out))) == []


def test_grouped_with_a_static_batch_is_verified_at_that_batch(tmp_path, capsys):
    out = tmp_path / "grouped.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--strategy", "grouped", "--static-batch",
                 "--input-shape", "2x3x32x32"]) == 0
    printed = capsys.readouterr().out
    assert "output@batch2" in printed and "output@batch1" not in printed


def test_verify_of_a_fixed_batch_graph_says_which_batch_it_checked(tmp_path, capsys):
    out = tmp_path / "grouped.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--strategy", "grouped", "--static-batch",
                 "--input-shape", "2x3x32x32"]) == 0
    capsys.readouterr()
    assert main(["verify", TINY, str(out), "--batch", "1,4"]) == 0
    assert "batch 2 (fixed in the graph, not 1,4)" in capsys.readouterr().out


def test_over_tolerance_exits_1_and_keeps_the_file(tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--atol", "0", "--rtol", "0", "--batch", "2"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "smallest passing atol" in captured.err
    assert captured.err.count("\n") == 1 and out.exists()


@pytest.mark.parametrize("args, message", [
    (["--exporter", "dynamo", "--opset", "17"], "the dynamo exporter emits opsets 18-23, not 17"),
    (["--opset", "24"], "no exporter emits opset 24: pass --opset 23"),
    (["--input-shape", "3x32x32"], "the input shape must be N x C x H x W"),
    (["--batch", "1,zero"], "bad batch list"),
], ids=["opset", "auto-opset", "input-shape", "batch"])
def test_bad_options_are_one_line_errors_with_exit_2(tmp_path, capsys, args, message):
    assert main(["export", TINY, "-o", str(tmp_path / "x.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_exporter_and_opset_are_checked_before_the_model_is_loaded(tmp_path, capsys):
    assert main(["export", "sample:no_such_sample", "-o", str(tmp_path / "x.onnx"), "--input-shape", "1x3x8x8",
                 "--exporter", "dynamo", "--opset", "17"]) == 2
    assert "the dynamo exporter emits opsets 18-23, not 17" in capsys.readouterr().err  # not 'unknown sample'


def test_help_lists_the_options_with_their_defaults(capsys):
    assert main(["export", "--help"]) == 0
    out = re.sub(r"[\s│]+", " ", capsys.readouterr().out)  # the help column wraps: join its lines
    for text in ("--static-batch", "--strategy", "default: plugin", "--exporter", "default: auto", "--trust-pickle",
                 "--no-verify", "default: 1,4", "default: 0.0001"):
        assert text in out


def test_for_ort_trt_writes_the_providers_domain_and_verifies_the_plugin_graph(tmp_path, capsys):
    from dyconv_deploy.trt.ort_trt import ORT_TRT_DOMAIN

    out = tmp_path / "tiny-ort-trt.onnx"
    assert main(["export", TINY, "-o", str(out), *FAST, "--for", "ort-trt", "--batch", "2"]) == 0
    printed = capsys.readouterr().out
    assert "for ort-trt" in printed and "output@batch2" in printed and "✗" not in printed
    model = onnx.load(str(out))
    assert not contract_nodes(model)  # no dyconv node left
    nodes = [n for n in model.graph.node if n.domain == ORT_TRT_DOMAIN]
    assert len(nodes) == 4 and {n.op_type for n in nodes} == {"DynamicConv2d"}
    assert ORT_TRT_DOMAIN in {o.domain for o in model.opset_import}
    plugin = tmp_path / "tiny.onnx"  # the same nodes, attributes and inputs as the plugin lowering
    assert main(["export", TINY, "-o", str(plugin), *FAST, "--no-verify"]) == 0
    expected = [n for n in onnx.load(str(plugin)).graph.node if n.op_type == "DynamicConv2d"]
    assert [(list(n.input), n.attribute) for n in nodes] == [(list(n.input), n.attribute) for n in expected]


def test_for_ort_trt_needs_the_plugin_strategy_before_any_work(tmp_path, capsys):
    assert main(["export", "sample:no_such_sample", "-o", str(tmp_path / "x.onnx"), "--input-shape", "1x3x8x8",
                 "--for", "ort-trt", "--strategy", "experts"]) == 2
    err = capsys.readouterr().err
    assert "needs the plugin strategy, not experts" in err  # before loading: the sample does not exist
    hint = err.split("Next: ", 1)[1]
    assert hint.startswith("dyconv-deploy export sample:no_such_sample") and "--for ort-trt" in hint
    assert "--strategy" not in hint  # plugin is the default
