"""``bench`` and ``demo``: graphs against the static twin, interleaved; the table, JSON, plot and cache."""

import json
import sys

import pytest

from dyconv_deploy.bench import bench
from dyconv_deploy.bench.graphs import CACHE_ENV, twin_spec
from dyconv_deploy.bench.measure import interleaved, summarize
from dyconv_deploy.bench.report import OPENVINO_PROFILE_CAVEAT, profile_table
from dyconv_deploy.cli.main import main
from dyconv_deploy.export.settings import STRATEGIES

TINY = "sample:tiny_dynamic"
QUICK = {"warmup": 0, "iterations": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graph-cache")


def test_every_strategy_against_the_twin_at_every_batch(cache, tmp_path):
    result = bench(TINY, "ort-cpu", STRATEGIES, (1, 2), cache_dir=cache, json_path=tmp_path / "b.json",
                   plot_path=tmp_path / "b.png", **QUICK)
    assert result.twin == "sample:tiny_dynamic_static" and not result.skipped
    assert [(r.strategy, r.batch) for r in result.rows] == [(s, b) for b in (1, 2) for s in STRATEGIES]
    for row in result.rows:
        assert row.stats.iterations == row.static.iterations == 3
        assert row.stats.p50_ms <= row.stats.p90_ms <= row.stats.p99_ms
        assert row.ratio == pytest.approx(row.stats.p50_ms / row.static.p50_ms)
        assert row.stats.throughput == pytest.approx(row.batch * 1e3 / row.stats.p50_ms)
    report = json.loads((tmp_path / "b.json").read_text())
    assert {"versions", "cpu", "logical_cpus", "python"} <= set(report["environment"])
    assert report["environment"]["versions"]["onnxruntime"]
    assert len(report["results"]) == 8 and report["settings"]["batches"] == [1, 2]
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


def test_graphs_are_cached_by_content_and_grouped_per_batch(cache):
    bench(TINY, "ort-cpu", ("plugin", "grouped"), (1, 2), cache_dir=cache, **QUICK)
    files = sorted(p.name for p in cache.iterdir())
    assert len([f for f in files if f.startswith("grouped-")]) == 2  # a static batch: one graph per batch
    assert len([f for f in files if f.startswith("plugin-")]) == 1   # a dynamic batch: one graph
    stamps = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    bench(TINY, "ort-cpu", ("plugin", "grouped"), (1, 2), cache_dir=cache, **QUICK)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps


def test_torch_backend_times_the_modules(cache):
    result = bench(TINY, "torch", ("plugin",), (1, 2), cache_dir=cache, **QUICK)
    assert [(r.strategy, r.batch) for r in result.rows] == [("eager", 1), ("eager", 2)]
    assert result.backend == "torch" and all(r.static.p50_ms > 0 for r in result.rows)


def test_a_model_without_a_bundled_twin_is_timed_against_its_static_graph(tmp_path, cache):
    (tmp_path / "net.py").write_text(
        "import torch\nfrom dyconv_deploy.nn import DynamicConv2d\n"
        "def build():\n    return torch.nn.Sequential(DynamicConv2d(3, 8, 3, padding=1), torch.nn.ReLU())\n")
    spec = f"{tmp_path / 'net.py'}:build"
    assert twin_spec(spec) is None
    result = bench(spec, "ort-cpu", ("experts",), (2,), input_shape=(1, 3, 16, 16), cache_dir=cache, **QUICK)
    assert "static strategy" in result.twin and [r.strategy for r in result.rows] == ["experts"]


def test_interleaving_rotates_the_order_and_times_every_run():
    calls = []
    times = interleaved({name: (lambda n=name: calls.append(n)) for name in "abc"}, warmup=1, iterations=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())
    stats = summarize([0.001, 0.002, 0.003], batch=4)
    assert stats.p50_ms == pytest.approx(2.0) and stats.throughput == pytest.approx(2000.0)


@pytest.mark.parametrize("args, message", [
    (["--backend", "tvm"], "unknown bench backend 'tvm'"),
    (["--strategy", "plugin,fast"], "unknown strategy fast"),
    (["--batch", "0,2"], "bad batch list"),
    (["--iterations", "0"], "need warmup >= 0 and iterations >= 1"),
])
def test_bad_arguments_are_one_line_errors(capsys, args, message):
    assert main(["bench", TINY, *args]) == 2
    assert message in capsys.readouterr().err


def test_trt_backend_without_tensorrt_says_what_to_install(capsys, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, even where it is installed
    assert main(["bench", TINY, "--backend", "trt", "--strategy", "plugin", "--batch", "1",
                 "--cache-dir", str(cache)]) == 2
    assert "tensorrt" in capsys.readouterr().err


def test_cli_prints_the_table_and_writes_json(tmp_path, cache, capsys):
    assert main(["bench", TINY, "--strategy", "plugin,static", "--batch", "1", "--warmup", "0", "--iterations",
                 "2", "--json", str(tmp_path / "out.json"), "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "static twin" in printed and "dyn/static" in printed and "plugin" in printed
    assert json.loads((tmp_path / "out.json").read_text())["twin"] == "sample:tiny_dynamic_static"


def test_demo_runs_every_stage_and_writes_the_graphs(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv("COLUMNS", "250")  # one line per table row
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--sample", "tiny_dynamic", "--batch", "1,2", "--iterations", "2",
                 "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    for stage in ("load", "convert", "export", "verify", "bench ort-cpu", "bench openvino"):  # openvino: installed
        assert f"│ {stage}" in printed
    assert "✗" not in printed and "max abs error" in printed and "(ort-cpu, openvino)" in printed
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["bench.json", "bench.png", "bench-openvino.json", "bench-openvino.png",
                              *(f"{s}.onnx" for s in STRATEGIES)])
    results = json.loads((out / "bench.json").read_text())["results"]
    assert {(r["strategy"], r["batch"]) for r in results} == {(s, b) for s in STRATEGIES for b in (1, 2)}
    openvino = json.loads((out / "bench-openvino.json").read_text())
    assert openvino["backend"] == "openvino"
    assert {(r["strategy"], r["batch"]) for r in openvino["results"]} == {
        (s, b) for s in ("plugin", "grouped", "static") for b in (1, 2)}


def test_demo_refuses_a_sample_without_a_twin(capsys):
    assert main(["demo", "--sample", "tiny_dynamic_static"]) == 2
    assert "needs a dynamic sample with a static twin" in capsys.readouterr().err


def test_a_model_without_a_twin_does_not_time_its_static_graph_twice(tmp_path, cache):
    (tmp_path / "net.py").write_text(
        "import torch\nfrom dyconv_deploy.nn import CondConv2d\n"
        "def build():\n    return torch.nn.Sequential(CondConv2d(3, 4, 3, padding=1), torch.nn.ReLU())\n")
    result = bench(f"{tmp_path / 'net.py'}:build", "ort-cpu", STRATEGIES, (1,), input_shape=(1, 3, 8, 8),
                   cache_dir=cache, **QUICK)
    assert [r.strategy for r in result.rows] == ["plugin", "experts", "grouped"]
    assert "it is the static twin of this model" in result.skipped["static"]


def test_demo_without_matplotlib_still_runs_and_says_how_to_get_the_plot(tmp_path, cache, capsys, monkeypatch):
    from dyconv_deploy.bench import demo

    monkeypatch.setattr(demo, "available", lambda module: module != "matplotlib")
    monkeypatch.setenv("COLUMNS", "250")  # one line per table row
    demo.run_demo(tmp_path / "out", sample="tiny_dynamic", batches=(1,), warmup=0, iterations=1, cache_dir=cache,
                  engines=("ort-cpu",))
    assert not (tmp_path / "out" / "bench.png").exists() and (tmp_path / "out" / "bench.json").is_file()
    assert "dyconv-deploy[plot]" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_profile_splits_each_graph_into_op_categories(tmp_path, cache, backend):
    result = bench("sample:tiny_dynamic", backend, ("plugin", "grouped"), (2,), cache_dir=cache, profile=True,
                   json_path=tmp_path / "bench.json", **QUICK)
    for row in result.rows:
        dynamic, twin = row.profile["categories"], row.static_profile["categories"]
        assert dynamic["attention"] > 0 and dynamic["mixing"] > 0 and dynamic["convolution"] > 0, row.strategy
        assert twin["attention"] == twin["mixing"] == 0 and twin["convolution"] > 0
        assert sum(dynamic.values()) == pytest.approx(row.profile["total_ms"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["settings"]["profile"] is True
    assert all(set(r["profile"]["categories"]) == {"attention", "mixing", "convolution", "other"}
               for r in saved["results"])
    caption = profile_table(result).caption  # OpenVINO's table says how far its counters can be trusted
    assert (caption == OPENVINO_PROFILE_CAVEAT) if backend == "openvino" else caption is None


def test_profile_is_refused_where_no_profiler_is_wired(capsys):
    assert main(["bench", "sample:tiny_dynamic", "--backend", "torch", "--profile"]) == 2
    assert "--profile works on ort-cpu, openvino" in capsys.readouterr().err


def test_openvino_options_are_refused_on_other_backends(capsys):
    assert main(["bench", "sample:tiny_dynamic", "--precision", "bf16"]) == 2
    assert "apply to --backend openvino only" in capsys.readouterr().err


def test_baseline_times_the_twin_on_another_engine_in_the_same_rounds(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the whole table on one line per row
    assert main(["bench", TINY, "--backend", "openvino", "--baseline", "ort-cpu", "--strategy", "plugin",
                 "--batch", "1,2", "--warmup", "0", "--iterations", "3", "--json", str(tmp_path / "b.json"),
                 "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "vs ort-cpu twin" in printed and "static twin (ort-cpu)" in printed
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["baseline"] == "ort-cpu" and len(saved["results"]) == 2
    for entry in saved["results"]:
        assert entry["baseline_static"]["iterations"] == 3 and entry["baseline_static"]["batch"] == entry["batch"]
        assert entry["ratio_p50_baseline"] == pytest.approx(entry["dynamic"]["p50_ms"]
                                                            / entry["baseline_static"]["p50_ms"])


@pytest.mark.parametrize("args, message", [
    (["--baseline", "ort-cpu"], "is the benchmarked engine itself"),
    (["--baseline", "tvm"], "--baseline takes an ONNX engine"),
    (["--backend", "torch", "--baseline", "ort-cpu"], "--baseline takes an ONNX engine"),
])
def test_bad_baselines_are_one_line_errors(capsys, args, message):
    assert main(["bench", TINY, *args]) == 2
    assert message in capsys.readouterr().err


def test_cpu_clock_counts_compute_not_waiting():
    import time

    def busy():
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    times = interleaved({"sleep": lambda: time.sleep(0.05), "busy": busy}, warmup=0, iterations=2, clock="cpu")
    assert max(times["sleep"]) < 0.01 and min(times["busy"]) >= 0.02  # a sleeping run costs no CPU time
    wall = interleaved({"sleep": lambda: time.sleep(0.05)}, warmup=0, iterations=2)
    assert min(wall["sleep"]) >= 0.05


def test_cpu_clock_bench_needs_one_thread(capsys, cache):
    assert main(["bench", TINY, "--clock", "cpu"]) == 2
    assert "add --threads 1" in capsys.readouterr().err
    result = bench(TINY, "ort-cpu", ("plugin",), (1,), cache_dir=cache, threads=1, clock="cpu", **QUICK)
    assert result.settings["clock"] == "cpu" and result.rows[0].stats.iterations == 3
