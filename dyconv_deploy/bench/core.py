"""``bench``: a dynamic model's graphs against its static twin, side by side in one process.

For each batch size, every strategy's graph and the twin run interleaved
(:func:`~dyconv_deploy.bench.measure.interleaved`), so the dynamic/static ratio compares
runs made under the same conditions. Graphs come from :class:`~dyconv_deploy.bench.graphs.GraphSet`
(exported once, cached); a strategy that fails to lower or load is reported and skipped.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from dyconv_deploy.bench import BACKENDS
from dyconv_deploy.bench.graphs import TWIN, GraphSet, default_cache_dir, twin_spec
from dyconv_deploy.bench.measure import CLOCKS, Stats, interleaved, rss_mb, summarize
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io import default_input_shape
from dyconv_deploy.bench.layer_tuning import Tuning, check_tunable, tune_layers
from dyconv_deploy.export.settings import AUTO_STRATEGY, DEFAULT_OPSET, STRATEGIES

EAGER = "eager"
BASELINE = "baseline twin"  # key of the baseline engine's twin in a batch's interleaved run
PROFILED_BACKENDS = ("ort-cpu", "openvino")
BENCH_STRATEGIES = (*STRATEGIES, AUTO_STRATEGY)


@dataclass(frozen=True)
class Row:
    """One graph at one batch size, with the twin's stats from the same interleaved run."""

    strategy: str
    batch: int
    stats: Stats
    static: Stats
    profile: Optional[dict] = None  # --profile: {"categories": {category: ms}, "total_ms", "nodes"}
    static_profile: Optional[dict] = None
    baseline: Optional[Stats] = None  # --baseline: the twin on the baseline engine, in the same rounds

    @property
    def baseline_ratio(self) -> Optional[float]:
        """Dynamic p50 / the baseline engine's twin p50 (None without a baseline)."""
        return None if self.baseline is None else self.stats.p50_ms / self.baseline.p50_ms

    @property
    def ratio(self) -> float:
        """Dynamic / static p50 latency."""
        return self.stats.p50_ms / self.static.p50_ms


@dataclass
class BenchResult:
    """Everything a benchmark measured; ``to_dict`` is the JSON layout."""

    model: str
    twin: str
    backend: str
    rows: list[Row]
    settings: dict
    environment: dict
    skipped: dict[str, str] = field(default_factory=dict)
    baseline: Optional[str] = None  # the engine whose static twin every row is also compared with
    tunings: list[Tuning] = field(default_factory=list)  # --strategy auto: the per-layer timings, one per batch

    @property
    def batches(self) -> list[int]:
        return list(dict.fromkeys(row.batch for row in self.rows))

    def to_dict(self) -> dict:
        return {"model": self.model, "twin": self.twin, "backend": self.backend, "baseline": self.baseline,
                "settings": self.settings, "environment": self.environment, "skipped": self.skipped,
                **({"auto": [tuning.to_dict() for tuning in self.tunings]} if self.tunings else {}),
                "results": [{"strategy": row.strategy, "batch": row.batch, "ratio_p50": row.ratio,
                             "dynamic": asdict(row.stats), "static": asdict(row.static),
                             **({"ratio_p50_baseline": row.baseline_ratio, "baseline_static": asdict(row.baseline)}
                                if row.baseline is not None else {}),
                             **({"profile": row.profile, "static_profile": row.static_profile}
                                if row.profile is not None else {})} for row in self.rows]}


def bench(model_spec: str, backend: str = "ort-cpu", strategies: Sequence[str] = STRATEGIES,
          batches: Sequence[int] = (1, 8, 32), *, warmup: int = 5, iterations: int = 30,
          input_shape: Optional[Sequence[int]] = None, json_path: Optional[str | Path] = None,
          plot_path: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None, threads: int = 0,
          opset: int = DEFAULT_OPSET, arch: Optional[str] = None, trust_pickle: bool = False,
          adapters: Sequence[str] = (), runtime_options: Optional[dict] = None, profile: bool = False,
          baseline: Optional[str] = None, clock: str = "wall", console: Optional[Console] = None) -> BenchResult:
    """Measure ``model_spec``'s graphs against its static twin on ``backend`` at each batch size.

    Args:
        strategies: lowering strategies to time (ignored by the eager ``torch`` backends).
        input_shape: ``[N, C, H, W]`` (N ignored); default: the sample's shape or 1x3x224x224.
        cache_dir: where exported graphs and engines are cached (default :func:`default_cache_dir`).
        threads: ONNX Runtime intra-op threads (0: its default, one per physical core).
        arch, trust_pickle, adapters: how to load and convert MODEL, as for ``export``.
        runtime_options: passed to every graph's runtime (``openvino``: ``precision``, ``expert_dtype``; the
            twin gets the same precision, its experts are plain weights).
        profile: after timing, run each graph under the engine's profiler and report the time per op
            category (attention, mixing, convolution, other; :mod:`.profile`) in the table and JSON
            (``ort-cpu`` and ``openvino`` only).
        baseline: another engine (``ort-cpu``, ``openvino``, ...) whose static twin (fp32, default options) runs
            in the same interleaved rounds, so every graph also gets a ratio to it: "is the dynamic net on this
            engine as fast as the static one on that engine?"
        clock: ``wall`` (latency) or ``cpu`` (the process's CPU time per run: robust to other load on the
            machine; needs ``threads=1``, where it is the latency an idle core would give).
    Returns:
        The result, also printed as a table and written to ``json_path`` / ``plot_path`` when given.
    """
    _check_arguments(backend, strategies, batches, warmup, iterations, baseline)
    if clock not in CLOCKS:
        raise DyconvError(f"unknown clock {clock!r}; choose one of: {', '.join(CLOCKS)}")
    if clock == "cpu" and threads != 1:
        raise DyconvError("--clock cpu sums the CPU time of every inference thread, which is latency only with "
                          "one thread: add --threads 1")
    if profile and backend not in PROFILED_BACKENDS:
        raise DyconvError(f"--profile works on {', '.join(PROFILED_BACKENDS)}, not {backend}")
    console = console or Console()
    shape = tuple(input_shape) if input_shape else default_input_shape(model_spec)
    model, twin, twin_name = _load_models(model_spec, shape, arch, trust_pickle, adapters)
    skipped: dict[str, str] = {}
    if backend.startswith("torch"):
        runtimes = _EagerRuntimes(model, twin, backend, model_spec, shape)
        strategies = (EAGER,)
    else:
        graphs = GraphSet(model, twin, shape, Path(cache_dir) if cache_dir else default_cache_dir(), opset)
        runtimes = _GraphRuntimes(graphs, backend, threads, max(batches), runtime_options or {},
                                  baseline=_GraphRuntimes(graphs, baseline, threads, max(batches), {})
                                  if baseline else None)
        if twin is None and "static" in strategies:  # the twin is that very graph
            strategies = tuple(s for s in strategies if s != "static")
            skipped["static"] = "it is the static twin of this model (no bundled twin)"
    rows: list[Row] = []
    try:
        for batch in batches:
            rows += _time_batch(runtimes, strategies, batch, shape, warmup, iterations, skipped, console, profile,
                                clock)
    finally:
        runtimes.close()
    settings = {"strategies": list(strategies), "batches": list(batches), "warmup": warmup, "iterations": iterations,
                "input_shape": list(shape[1:]), "threads": threads, "clock": clock, "opset": opset, **(runtime_options or {}),
                "memory": runtimes.memory_note, "profile": profile}
    from dyconv_deploy.bench.report import environment, plot, profile_table, table, write_json

    result = BenchResult(model_spec, twin_name, backend, rows, settings, environment(), skipped, baseline,
                         runtimes.tunings)
    console.print(table(result))
    for tuning in result.tunings:
        console.print(f"auto: {tuning.summary()}")
    if profile:
        console.print(profile_table(result))
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped {name}[/yellow]: {escape(reason)}")
    if json_path is not None:
        console.print(f"wrote {write_json(result, json_path)}")
    if plot_path is not None:
        console.print(f"wrote {plot(result, plot_path)}")
    return result


def _time_batch(runtimes, strategies, batch, shape, warmup, iterations, skipped, console, profile,
                clock) -> list[Row]:
    """The twin and every strategy that runs at ``batch``, interleaved; a strategy that fails is skipped.
    With ``profile``, each graph is then run under the engine's profiler (not timed with it)."""
    with console.status(f"batch {batch}: preparing the static twin and {', '.join(strategies)}") as status:
        runtimes.progress = status.update
        try:
            ready = {TWIN: runtimes.get(TWIN, batch)}
            if runtimes.baseline is not None:
                ready[BASELINE] = runtimes.baseline.get(TWIN, batch)
        except Exception as exc:  # noqa: BLE001 - any backend failure, reported in one sentence
            raise DyconvError(f"the static twin could not run at batch {batch}: {_reason(exc)}") from exc
        for name in strategies:
            if name in skipped:
                continue
            try:
                ready[name] = runtimes.get(name, batch)
            except Exception as exc:  # noqa: BLE001 - report it and time the others
                skipped[name] = _reason(exc)
    feeds = {ready[TWIN][0].input_specs[0].name: _random_input(batch, shape)}
    with console.status(f"batch {batch}: timing {len(ready)} graphs interleaved, {iterations} iterations"):
        times = interleaved({name: _runner(rt, feeds) for name, (rt, _) in ready.items()}, warmup, iterations, clock)
    static = summarize(times[TWIN], batch, ready[TWIN][1])
    profiles = {}
    if profile:
        with console.status(f"batch {batch}: profiling {len(ready)} graphs"):
            profiles = {name: runtimes.profile(name, batch, feeds, max(3, iterations // 3)).to_dict()
                        for name in ready if name != BASELINE}
    baseline = summarize(times[BASELINE], batch, ready[BASELINE][1]) if BASELINE in ready else None
    return [Row(name, batch, summarize(times[name], batch, memory), static, profiles.get(name), profiles.get(TWIN),
                baseline) for name, (_, memory) in ready.items() if name not in (TWIN, BASELINE)]


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, DyconvError) else f"{type(exc).__name__}: {text}"


def _check_arguments(backend, strategies, batches, warmup, iterations, baseline) -> None:
    if backend not in BACKENDS:
        raise DyconvError(f"unknown bench backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if baseline is not None:
        graph_backends = [b for b in BACKENDS if not b.startswith("torch")]
        if baseline not in graph_backends or backend.startswith("torch"):
            raise DyconvError(f"--baseline takes an ONNX engine ({', '.join(graph_backends)}) and needs one for "
                              f"--backend too; got --baseline {baseline} with --backend {backend}")
        if baseline == backend:
            raise DyconvError(f"--baseline {baseline} is the benchmarked engine itself: its twin is already "
                              "the 'static twin' row")
    unknown = [s for s in strategies if s not in BENCH_STRATEGIES]
    if unknown or not strategies:
        raise DyconvError(f"unknown strategy {', '.join(unknown) or '(none)'}; choose from: "
                          f"{', '.join(BENCH_STRATEGIES)}")
    if AUTO_STRATEGY in strategies and not backend.startswith("torch"):
        check_tunable(backend)
    if not batches or min(batches) < 1:
        raise DyconvError(f"batch sizes must be positive integers, got {list(batches)}")
    if warmup < 0 or iterations < 1:
        raise DyconvError(f"need warmup >= 0 and iterations >= 1, got {warmup} and {iterations}")


def _load_models(spec: str, shape, arch, trust_pickle, adapters):
    """The converted dynamic model, its twin module (None: use the static graph) and the twin's name."""
    from dyconv_deploy.convert import convert_model
    from dyconv_deploy.io import load_model

    example = torch.randn(1, *shape[1:], generator=torch.Generator().manual_seed(0))
    model, report = convert_model(load_model(spec, arch=arch, trust_pickle=trust_pickle), example,
                                  adapters=list(adapters))
    report.raise_for_unknown()
    twin = twin_spec(spec)
    if twin is None:
        return model, None, f"{spec} lowered with the static strategy"
    return model, load_model(twin), twin


def _random_input(batch: int, shape) -> np.ndarray:
    return torch.randn(batch, *shape[1:], generator=torch.Generator().manual_seed(batch)).numpy()


def _runner(runtime, feeds):
    return lambda: runtime.run(feeds)


class _GraphRuntimes:
    """ONNX Runtime sessions, OpenVINO models or TensorRT engines per graph file, loaded once and reused across
    batches."""

    def __init__(self, graphs: GraphSet, backend: str, threads: int, max_batch: int, options: dict,
                 baseline: Optional["_GraphRuntimes"] = None):
        self.graphs, self.backend, self.threads, self.max_batch = graphs, backend, threads, max_batch
        self.options, self.baseline = options, baseline
        self.tunings: list[Tuning] = []
        self.progress: Callable[[str], None] = lambda message: None
        self._loaded: dict[Path, tuple] = {}
        self._engine_warmed: Optional[object] = None  # a first runtime, kept: the engine's one-time memory
        self.memory_note = ("growth of the process's resident memory while loading each graph and first "
                            "running it at each batch size, after the engine's own start-up (approximate)")

    def get(self, name: str, batch: int):
        from dyconv_deploy.runtime import load_runtime

        path = self._path(name, batch)
        if path in self._loaded:
            runtime, memory = self._loaded[path]
            before = rss_mb()
        else:
            model = self._engine(path) if self.backend == "trt" else path  # built before memory is measured
            if self._engine_warmed is None:  # else the first graph (the twin) is charged the engine's start-up
                self._engine_warmed = load_runtime(model, self.backend, **self._options()).load()
                self._engine_warmed.run(self._feeds(self._engine_warmed, batch))
            before = rss_mb()
            runtime, memory = load_runtime(model, self.backend, **self._options()), 0.0
            runtime.load()
        runtime.run(self._feeds(runtime, batch))
        self._loaded[path] = (runtime, memory + rss_mb() - before)
        return self._loaded[path]

    def _feeds(self, runtime, batch: int) -> dict:
        return {runtime.input_specs[0].name: _random_input(batch, self.graphs.input_shape)}

    def _path(self, name: str, batch: int) -> Path:
        """The graph file of ``name`` at ``batch``; ``auto`` tunes its layers at that batch first (cached)."""
        if name != AUTO_STRATEGY:
            return self.graphs.path(name, batch)
        if not any(t.batch == batch for t in self.tunings):
            self.tunings.append(tune_layers(self.graphs.raw(), self.backend, batch, runtime_options=self.options,
                                            threads=self.threads, cache_dir=self.graphs.cache_dir,
                                            progress=self.progress))
        tuning = next(t for t in self.tunings if t.batch == batch)
        return self.graphs.per_layer_path(tuning.choices())

    def profile(self, name: str, batch: int, feeds: dict, iterations: int):
        """The :class:`~dyconv_deploy.bench.profile.Profile` of graph ``name`` at ``batch`` (a runtime of its own)."""
        import onnx

        from dyconv_deploy.bench.profile import profile_onnxruntime, profile_openvino
        from dyconv_deploy.runtime import load_runtime

        path = self._path(name, batch)
        if self.backend == "ort-cpu":
            return profile_onnxruntime(path, feeds, iterations, threads=self.threads)
        with load_runtime(path, "openvino", profile=True, **self._options()) as runtime:
            return profile_openvino(runtime, feeds, onnx.load(str(path)), iterations)

    def _options(self) -> dict:
        if self.backend == "trt":
            return {}
        if self.backend == "openvino":
            return {"threads": self.threads, **self.options}
        return {"threads": self.threads, "spinning": False}

    def _engine(self, onnx_path: Path) -> Path:
        """The cached engine of ``onnx_path`` (profile 1..max batch), rebuilt when it cannot load here."""
        from dyconv_deploy.deps import require
        from dyconv_deploy.trt.build import build_engine
        from dyconv_deploy.trt.sidecar import check_compatible, current_environment, read_sidecar

        engine = onnx_path.with_suffix(f".max{self.max_batch}.engine")
        sidecar = read_sidecar(engine) if engine.is_file() else None
        if sidecar is not None:
            try:
                check_compatible(sidecar, current_environment(require("tensorrt", for_="bench --backend trt")))
            except DyconvError:  # another TensorRT, GPU or plugin built it
                sidecar = None
        if sidecar is None:
            build_engine(onnx_path, engine, min_batch=1, opt_batch=self.max_batch, max_batch=self.max_batch)
        return engine

    def close(self) -> None:
        for runtime, _ in self._loaded.values():
            runtime.close()
        if self._engine_warmed is not None:
            self._engine_warmed.close()
        if self.baseline is not None:
            self.baseline.close()


class _EagerRuntimes:
    """PyTorch eager: the dynamic model (label ``eager``) and its twin module, on CPU or CUDA."""

    def __init__(self, model, twin, backend: str, spec: str, shape):
        if twin is None:
            raise DyconvError(f"the {backend} backend times modules, so it needs a bundled static twin; {spec} has "
                              "none (use an ONNX backend, where the static strategy graph is the twin)")
        from dyconv_deploy.runtime import load_runtime

        self.cuda, self.shape, self.baseline, self.tunings = backend == "torch-cuda", shape, None, []
        device = "cuda" if self.cuda else "cpu"
        self._runtimes = {EAGER: load_runtime(model, "torch", device=device, use_extension=self.cuda),
                          TWIN: load_runtime(twin, "torch", device=device)}
        self.memory_note = ("torch.cuda.max_memory_allocated during the first run at each batch" if self.cuda
                            else "growth of the process's resident memory during the first run (approximate)")

    def get(self, name: str, batch: int):
        runtime = self._runtimes[name].load()
        feeds = {runtime.input_specs[0].name: _random_input(batch, self.shape)}
        if not self.cuda:
            before = rss_mb()
            runtime.run(feeds)
            return runtime, rss_mb() - before
        torch.cuda.reset_peak_memory_stats()
        runtime.run(feeds)
        return runtime, torch.cuda.max_memory_allocated() / 2**20

    def close(self) -> None:
        for runtime in self._runtimes.values():
            runtime.close()
