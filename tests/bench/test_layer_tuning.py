"""``--strategy auto``: each layer timed on the engine, the fastest kept, cached, recorded and verified.

The timing itself cannot be asserted (this machine is shared and noisy), so the tests that check the
choice reaches the graph replace the timer with one that makes ``experts`` fastest on chosen layers.
"""

import json

import pytest
import torch
from torch import nn

from dyconv_deploy.bench import bench, layer_tuning
from dyconv_deploy.bench.layer_tuning import LayerTiming, check_tunable, tune_layers
from dyconv_deploy.cache import CACHE_ENV
from dyconv_deploy.cli.main import main
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import export_onnx
from dyconv_deploy.export.metadata import read_metadata
from dyconv_deploy.io.onnx_file import read_onnx
from dyconv_deploy.lower.per_layer import layer_strategies
from dyconv_deploy.nn import DynamicConv2d, ODConv2d
from dyconv_deploy.workflow import export_model

TINY = "sample:tiny_dynamic"


@pytest.fixture(scope="module")
def small_graph():
    model = nn.Sequential(DynamicConv2d(3, 8, 3, padding=1, temperature=1.0), nn.ReLU(),
                          ODConv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          DynamicConv2d(8, 8, 1, temperature=1.0)).eval()
    return export_onnx(model, torch.randn(1, 3, 12, 12))


def _experts_fastest_on(pattern: str):
    """A stand-in timer: experts 1 ms on layers whose label contains ``pattern``, 2 ms elsewhere; plugin 1.5 ms."""
    def time_candidates(layer, tuning, options):
        return {c: {"plugin": 1.5, "experts": 1.0 if pattern in layer.label else 2.0}.get(c, 3.0)
                for c in tuning.candidates}
    return time_candidates


def test_every_layer_is_timed_with_every_candidate_and_cached(small_graph, tmp_path):
    tuning = tune_layers(small_graph, "ort-cpu", 2, cache_dir=tmp_path, threads=1)
    assert tuning.candidates == ("plugin", "experts")
    assert [t.label for t in tuning.timings] == ["3x3 3->8 @12x12 K4", "3x3 8->8 g8 @12x12 K4 S",
                                                 "1x1 8->8 @12x12 K4"]
    assert all(set(t.ms) == {"plugin", "experts"} and min(t.ms.values()) > 0 for t in tuning.timings)
    assert not any(t.cached for t in tuning.timings)
    assert len(tuning.choices()) == 3 and set(tuning.choices().values()) <= {"plugin", "experts"}
    again = tune_layers(small_graph, "ort-cpu", 2, cache_dir=tmp_path, threads=1)
    assert all(t.cached for t in again.timings) and [t.ms for t in again.timings] == [t.ms for t in tuning.timings]
    assert "(3 cached)" in again.summary()
    # another batch, or a static batch (grouped joins the candidates), is timed anew
    assert not any(t.cached for t in tune_layers(small_graph, "ort-cpu", 1, cache_dir=tmp_path, threads=1).timings)
    static = tune_layers(small_graph, "ort-cpu", 2, static_batch=True, cache_dir=tmp_path, threads=1)
    assert static.candidates == ("plugin", "experts", "grouped") and not any(t.cached for t in static.timings)


def test_a_damaged_cache_entry_is_timed_again(small_graph, tmp_path):
    tune_layers(small_graph, "ort-cpu", 1, cache_dir=tmp_path, threads=1)
    entries = sorted((tmp_path / "layer-timings").iterdir())
    assert len(entries) == 3
    entries[0].write_text("{not json")
    entries[1].write_text(json.dumps({"ms": {"plugin": 1.0}}))  # a candidate missing
    retimed = tune_layers(small_graph, "ort-cpu", 1, cache_dir=tmp_path, threads=1)
    assert sorted(t.cached for t in retimed.timings) == [False, False, True]


def test_a_near_tie_keeps_the_first_candidate():
    assert LayerTiming("l", ("a",), {"plugin": 1.02, "experts": 1.0}).choice == "plugin"
    assert LayerTiming("l", ("a",), {"plugin": 1.05, "experts": 1.0}).choice == "experts"
    assert LayerTiming("l", ("a",), {"plugin": 2.0, "experts": 1.5, "grouped": 1.0}).choice == "grouped"


@pytest.mark.parametrize("backend, reason", [("trt", "tactics"), ("ort-trt", "tactics"), ("reference", "not an engine"),
                                             ("torch", "")])
def test_engines_auto_cannot_time_on_are_refused(backend, reason):
    with pytest.raises(DyconvError, match=f"not on {backend}.*{reason}.*use --strategy plugin"):
        check_tunable(backend)


def test_export_auto_lowers_each_layer_as_timed_and_verifies(tmp_path, monkeypatch, capsys):
    """The choices reach the written graph (experts on the depthwise layer only) and it passes verify."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(layer_tuning, "_time_candidates", _experts_fastest_on(" g16 "))
    output = tmp_path / "auto.onnx"
    result = export_model(TINY, output, (1, 3, 32, 32), strategy="auto", batches=(1, 3))
    choices = layer_strategies(read_onnx(output))
    assert sorted(choices.values()) == ["experts", "plugin", "plugin", "plugin"]
    metadata = read_metadata(read_onnx(output))
    assert metadata["strategy"] == "auto" and metadata["tuned_for"] == "ort-cpu at batch 1"
    assert [c.passed for c in result.comparisons] == [True, True]
    printed = capsys.readouterr().out
    assert "--strategy auto on ort-cpu, batch 1" in printed and "3x3 16->16 g16 @16x16 K4" in printed
    assert "ort-cpu, batch 1,3: 2/2 within" in printed  # verified on the engine it was tuned for


def test_export_auto_with_a_static_batch_can_choose_grouped(tmp_path, monkeypatch):
    def grouped_fastest(layer, tuning, options):
        return {c: {"grouped": 1.0}.get(c, 2.0) for c in tuning.candidates}
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(layer_tuning, "_time_candidates", grouped_fastest)
    output = tmp_path / "auto-static.onnx"
    result = export_model(TINY, output, (2, 3, 32, 32), strategy="auto", dynamic_batch=False)
    assert set(layer_strategies(read_onnx(output)).values()) == {"grouped"}
    assert all(c.passed for c in result.comparisons)


def test_export_auto_for_tensorrt_is_refused_with_runnable_fixes(capsys, tmp_path):
    code = main(["export", TINY, "-o", str(tmp_path / "x.onnx"), "--strategy", "auto", "--backend", "trt"])
    err = capsys.readouterr().err
    assert code == 2 and "tactics" in err
    assert f"Next: dyconv-deploy export {TINY} --output {tmp_path / 'x.onnx'} --backend trt or:" in err  # plugin
    assert "--strategy auto --backend ort-cpu" in err
    assert not (tmp_path / "x.onnx").exists()


def test_bench_auto_reports_its_choices(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_tuning, "_time_candidates", _experts_fastest_on("per-channel"))
    result = bench(TINY, "ort-cpu", ("plugin", "auto"), (1, 2), cache_dir=tmp_path, warmup=0, iterations=2,
                   json_path=tmp_path / "b.json")
    assert [(r.strategy, r.batch) for r in result.rows] == [("plugin", 1), ("auto", 1), ("plugin", 2), ("auto", 2)]
    report = json.loads((tmp_path / "b.json").read_text())
    assert [t["batch"] for t in report["auto"]] == [1, 2]
    chosen = {layer["label"]: layer["choice"] for layer in report["auto"][0]["layers"]}
    assert chosen["1x1 24->32 @8x8 K4 per-channel A"] == "experts"
    assert list(chosen.values()).count("plugin") == 3


def test_bench_auto_on_a_tensorrt_backend_is_refused_before_any_work(capsys):
    assert main(["bench", TINY, "--backend", "trt", "--strategy", "auto"]) == 2
    assert "tactics" in capsys.readouterr().err
