"""``dyconv-deploy inspect``: table, JSON, model specs and one-line errors."""

import json
import logging
import re
from pathlib import Path

import pytest

from dyconv_deploy.cli.main import main
from dyconv_deploy.samples import create_sample

FACTORY_FILE = """
from dyconv_deploy.nn import CondConv2d

def build():
    return CondConv2d(3, 4, 3, padding=1, num_experts=2)
"""


def test_json_lists_every_dynamic_conv_and_paper_figures(capsys):
    assert main(["inspect", "sample:tiny_dynamic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [1, 3, 32, 32]
    assert [layer["family"] for layer in report["layers"]] == ["dynamic_conv", "condconv", "odconv", "dynet"]
    assert report["total"]["params"] == sum(p.numel() for p in create_sample("tiny_dynamic").parameters())
    assert report["paper"] is None


def test_table_for_a_factory_file(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(FACTORY_FILE)
    assert main(["inspect", f"{path}:build", "--input-shape", "2x3x8x8"]) == 0
    out = capsys.readouterr().out
    assert "input 2x3x8x8" in out and "condconv" in out and "aggregation" in out


def test_module_factory_without_dynamic_convs(capsys):
    assert main(["inspect", "torch.nn:Identity", "--input-shape", "1x3x4x4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] == [] and report["total"] == {"params": 0, "madds": 0}


@pytest.mark.parametrize("args,message", [
    (["inspect", "sample:tiny_dynamic", "--input-shape", "1x3xbig"], "bad input shape '1x3xbig'"),
    (["inspect", "sample:tiny_dynamc"], "did you mean 'tiny_dynamic'"),
    (["inspect", "no_such_module_xyz:build"], "cannot import 'no_such_module_xyz'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_verbose_shows_the_traceback():
    from dyconv_deploy.errors import DyconvError

    with pytest.raises(DyconvError, match="unknown sample"):
        main(["-v", "inspect", "sample:nope"])


FOREIGN_FILE = """
import sys
sys.path.insert(0, {standins!r})
from standins import external_attention
from torch import nn

def build():
    return nn.Sequential(external_attention.DynamicConv(8, 8, 1, 1, temprature=1),
                         external_attention.CondConv(8, 8, 3, 1, 1))
"""


@pytest.fixture
def foreign_model(tmp_path, monkeypatch):
    """A file:factory spec of two External-Attention layers (a DynamicConv and a CondConv), in the current folder."""
    (tmp_path / "foreign.py").write_text(FOREIGN_FILE.format(standins=str(Path(__file__).parents[1] / "convert")))
    monkeypatch.chdir(tmp_path)
    return "foreign.py:build"


@pytest.mark.parametrize("command", [["inspect"], ["export", "--no-verify", "--exporter", "torchscript",
                                                    "--opset", "17"]], ids=["inspect", "export"])
def test_conversion_is_one_summary_line_and_per_layer_lines_need_verbose(foreign_model, command, capsys, caplog):
    args = [*command, foreign_model, "--input-shape", "2x8x9x9", *(["-o", "f.onnx"] if command[0] == "export" else [])]
    caplog.set_level(logging.DEBUG)
    assert main(args) == 0
    assert re.search(r"converted 2 external_attention layers, max error \d", capsys.readouterr().out)
    assert not [r for r in caplog.records if r.name.startswith("dyconv_deploy")]
    assert main(["-v", *args]) == 0
    per_layer = [r.getMessage() for r in caplog.records if r.name == "dyconv_deploy.convert.converter"]
    assert len(per_layer) == 2 and all("-> RoutedConv2d (K=4, max error" in line for line in per_layer)


def test_family_is_the_layers_math_and_source_where_it_comes_from(foreign_model, capsys):
    """External-Attention's DynamicConv (softmax) and CondConv (sigmoid) share an adapter, not a family."""
    assert main(["inspect", foreign_model, "--input-shape", "2x8x9x9", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [(layer["family"], layer["source"]) for layer in layers] == [("dynamic_conv", "external_attention"),
                                                                        ("condconv", "external_attention")]
    assert main(["inspect", "sample:tiny_dynamic", "--json"]) == 0
    assert {layer["source"] for layer in json.loads(capsys.readouterr().out)["layers"]} == {"dyconv_deploy"}
