"""bench's memory column: the growth of resident memory while a graph loads and first runs, after the engine's own
start-up, which the first graph loaded (the static twin) would otherwise carry alone."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from dyconv_deploy.bench import core

ENGINE_START_UP_MB, GRAPH_MB = 50.0, 3.0


class FakeRuntime:
    """Pays the engine's start-up on the first load of the process, and GRAPH_MB per graph loaded."""

    started = False

    def __init__(self, memory: dict):
        self.memory = memory
        self.input_specs = [SimpleNamespace(name="input")]

    def load(self):
        if not FakeRuntime.started:
            FakeRuntime.started = True
            self.memory["rss"] += ENGINE_START_UP_MB
        self.memory["rss"] += GRAPH_MB
        return self

    def run(self, feeds):
        return []

    def close(self):
        pass


@pytest.fixture
def runtimes(monkeypatch):
    memory = {"rss": 100.0}
    FakeRuntime.started = False
    monkeypatch.setattr(core, "rss_mb", lambda: memory["rss"])
    monkeypatch.setattr("dyconv_deploy.runtime.load_runtime", lambda *args, **kwargs: FakeRuntime(memory))
    graphs = SimpleNamespace(input_shape=(1, 3, 8, 8), path=lambda name, batch: Path(f"{name}-{batch}.onnx"))
    return core._GraphRuntimes(graphs, "ort-cpu", threads=1, max_batch=4, options={})


def test_no_graph_is_charged_the_engines_start_up(runtimes):
    memory = [runtimes.get(name, 1)[1] for name in ("static twin", "plugin", "experts")]
    assert memory == [GRAPH_MB] * 3
    runtimes.close()
