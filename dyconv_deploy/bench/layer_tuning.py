"""``--strategy auto``: time each dynamic layer's lowerings on the target engine and keep the fastest.

For every distinct layer geometry (:func:`~dyconv_deploy.lower.per_layer.layer_graphs`), each
candidate strategy — ``plugin`` (the custom node: the OpenVINO extension, or ONNX Runtime's
load-time expansion), ``experts`` (constant weights, K x the FLOPs) and, for a static batch,
``grouped`` — lowers that layer alone; the candidates then run interleaved on the engine at the
tuning batch and the lowest median wins. Timings are cached on disk by layer geometry, engine
and version, engine options, threads, batch, CPU model, package version and a hash of the
lowering code, so a second export of the same architecture times nothing. A layer runs alone
here, without its neighbours: the choice ignores layout changes between layers, which is why
``bench`` compares the ``auto`` graph with the single-strategy graphs.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
from rich.table import Table

from dyconv_deploy import __version__
from dyconv_deploy.bench.measure import interleaved
from dyconv_deploy.cache import default_cache_dir
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.artifacts import atomic_write_bytes
from dyconv_deploy.lower import lower
from dyconv_deploy.lower.per_layer import LayerGraph, layer_graphs

TUNED_BACKENDS = ("ort-cpu", "openvino", "ort-cuda")
NOT_TUNED = {"trt": "TensorRT itself times the plugin's algorithms for each layer, as tactics",
             "ort-trt": "ONNX Runtime's TensorRT provider runs the TensorRT plugin, whose algorithms TensorRT "
                        "times for each layer, as tactics"}
TIE_MARGIN = 0.03  # candidates within 3% of the fastest tie; the first in candidate order (plugin) wins
TIMING_BUDGET_S = 0.15  # timed runs per layer: about this many seconds for all candidates together
MIN_ITERATIONS, MAX_ITERATIONS, WARMUP = 7, 60, 3


@dataclass(frozen=True)
class LayerTiming:
    """The median milliseconds of each candidate on one layer geometry, and the layers that have it."""

    label: str
    layers: tuple[str, ...]
    ms: dict[str, float]
    cached: bool = False

    @property
    def choice(self) -> str:
        """The first candidate (in timing order: plugin, experts, grouped) within :data:`TIE_MARGIN` of the
        fastest, so timing noise does not move a layer off the simplest graph."""
        fastest = min(self.ms.values())
        return next(name for name, ms in self.ms.items() if ms <= fastest * (1 + TIE_MARGIN))


@dataclass
class Tuning:
    """Every layer's timings on ``backend`` at ``batch``; :meth:`choices` feeds ``lower_per_layer``."""

    backend: str
    batch: int
    candidates: tuple[str, ...]
    timings: list[LayerTiming] = field(default_factory=list)

    def choices(self) -> dict[str, str]:
        """Node output name -> the fastest strategy."""
        return {layer: timing.choice for timing in self.timings for layer in timing.layers}

    def summary(self) -> str:
        """E.g. ``29 layer shapes timed on ort-cpu at batch 1 (3 cached): plugin 30, experts 21``."""
        counts = {s: sum(len(t.layers) for t in self.timings if t.choice == s) for s in self.candidates}
        cached = sum(t.cached for t in self.timings)
        return (f"{len(self.timings)} layer shapes timed on {self.backend} at batch {self.batch}"
                f"{f' ({cached} cached)' if cached else ''}: "
                + ", ".join(f"{s} {n}" for s, n in counts.items() if n))

    def table(self) -> Table:
        """One row per layer geometry: how many layers have it, ms per candidate, the choice."""
        table = Table(title=f"--strategy auto on {self.backend}, batch {self.batch} (median ms of each layer alone)")
        table.add_column("layer (kernel/stride in->out groups @input K)")
        table.add_column("layers", justify="right")
        for candidate in self.candidates:
            table.add_column(f"{candidate} ms", justify="right")
        table.add_column("choice")
        for timing in self.timings:
            best = timing.choice
            cells = [f"[bold]{timing.ms[c]:.3f}[/bold]" if c == best else f"{timing.ms[c]:.3f}"
                     for c in self.candidates]
            table.add_row(timing.label, str(len(timing.layers)), *cells, best)
        return table

    def to_dict(self) -> dict:
        return {"backend": self.backend, "batch": self.batch, "candidates": list(self.candidates),
                "layers": [{**asdict(t), "layers": list(t.layers), "choice": t.choice} for t in self.timings]}


def candidates_for(static_batch: bool) -> tuple[str, ...]:
    """The exact strategies a layer can take: ``grouped`` only where the batch is fixed."""
    return ("plugin", "experts", "grouped") if static_batch else ("plugin", "experts")


def check_tunable(backend: str) -> None:
    """Refuse an engine ``auto`` cannot time layers on, before any work."""
    reason = NOT_TUNED.get(backend, "it is not an engine to deploy on" if backend == "reference" else "")
    if backend not in TUNED_BACKENDS:
        raise DyconvError(f"--strategy auto times each layer on {', '.join(TUNED_BACKENDS)}, not on {backend}"
                          f"{f' ({reason})' if reason else ''}; use --strategy plugin there")


def tune_layers(model: onnx.ModelProto, backend: str, batch: int, *, static_batch: bool = False,
                runtime_options: Optional[dict] = None, threads: int = 0, cache_dir: Optional[Path] = None,
                progress: Callable[[str], None] = lambda message: None) -> Tuning:
    """Time every distinct layer of ``model`` (an exported graph with contract nodes) on ``backend``.

    Args:
        batch: the batch the layers are timed at (the graph's own, when it is fixed).
        static_batch: the lowered graph will have a fixed batch, so ``grouped`` is a candidate.
        runtime_options: the engine's options (``openvino``: ``precision``, ``expert_dtype``), part of the cache key.
        threads: engine threads (0: the engine's default); with 1, runs are timed by CPU time.
        progress: called with a line saying which layer is being timed (e.g. a status spinner's ``update``).
    Raises:
        DyconvError: an engine ``auto`` cannot tune for, or a candidate that fails to run.
    """
    check_tunable(backend)
    cache = (cache_dir or default_cache_dir()) / "layer-timings"
    tuning = Tuning(backend, batch, candidates_for(static_batch))
    options = {**(runtime_options or {}), "threads": threads,
               **({"spinning": False} if backend.startswith("ort") else {})}
    progress("auto: finding the distinct dynamic layers")
    layers = layer_graphs(model)
    environment = _environment(backend)
    for index, layer in enumerate(layers, 1):
        key = _cache_key(layer, tuning, options, environment)
        ms = _read_cache(cache / f"{key}.json", tuning.candidates)
        cached = ms is not None
        if ms is None:
            progress(f"auto: timing {', '.join(tuning.candidates)} on layer {index}/{len(layers)} ({layer.label}) "
                     f"on {backend}")
            ms = _time_candidates(layer, tuning, options)
            atomic_write_bytes(_mkdir(cache) / f"{key}.json", json.dumps({"ms": ms}).encode())
        tuning.timings.append(LayerTiming(layer.label, tuple(layer.layers), ms, cached))
    return tuning


def _time_candidates(layer: LayerGraph, tuning: Tuning, options: dict) -> dict[str, float]:
    """Median ms of each candidate lowering of ``layer`` at ``tuning.batch``, interleaved."""
    from dyconv_deploy.runtime import load_runtime

    feeds = layer_inputs(layer.model, tuning.batch)
    runtimes = {}
    try:
        for candidate in tuning.candidates:
            static = tuning.batch if candidate == "grouped" else None
            try:
                runtime = load_runtime(lower(layer.model, candidate, static_batch=static), tuning.backend, **options)
                runtime.run(feeds)
            except Exception as exc:  # noqa: BLE001 - said in one sentence, with the layer
                raise DyconvError(f"auto: the {candidate} lowering of layer {layer.label} failed on {tuning.backend}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            runtimes[candidate] = runtime
        runners = {name: (lambda rt=rt: rt.run(feeds)) for name, rt in runtimes.items()}
        start = time.perf_counter()
        for run in runners.values():
            run()
        once = max(time.perf_counter() - start, 1e-6)
        iterations = int(np.clip(TIMING_BUDGET_S / once, MIN_ITERATIONS, MAX_ITERATIONS))
        times = interleaved(runners, WARMUP, iterations, "cpu" if options.get("threads") == 1 else "wall")
    finally:
        for runtime in runtimes.values():
            runtime.close()
    return {name: float(np.median(seconds) * 1e3) for name, seconds in times.items()}


def layer_inputs(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Random inputs of a layer graph: X ~ N(0, 1), A a softmax over experts (axis 1), S in (0, 1)."""
    rng = np.random.default_rng(batch)
    feeds = {}
    for value in model.graph.input:
        dims = [batch] + [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        sample = rng.standard_normal(dims)
        if value.name == "A":
            sample = np.exp(sample) / np.exp(sample).sum(axis=1, keepdims=True)
        elif value.name == "S":
            sample = 1 / (1 + np.exp(-sample))
        feeds[value.name] = sample.astype(dtype)
    return feeds


def _environment(backend: str) -> dict:
    """What else changes a timing: the CPU (or GPU), the engine's version and, on OpenVINO, the extension's build."""
    from dyconv_deploy.bench.report import environment

    env = environment()
    engine = {"ort-cpu": "onnxruntime", "ort-cuda": "onnxruntime-gpu", "openvino": "openvino"}[backend]
    try:
        version = metadata.version(engine)
    except metadata.PackageNotFoundError:
        version = None
    fields = {"cpu": env["cpu"], "logical_cpus": env["logical_cpus"], "engine": f"{engine} {version}"}
    if backend == "ort-cuda":
        fields["gpu"] = env["gpu"]
    if backend == "openvino":
        from dyconv_deploy.runtime.openvino_extension import build_key

        fields["extension"] = build_key()
    return fields


@lru_cache(maxsize=1)
def _lowering_sources_sha256() -> str:
    """Hash of the code that decides what each candidate graph is: the lower stage and ONNX Runtime's
    load-time expansion (so an edited checkout does not reuse timings of other graphs)."""
    from dyconv_deploy import lower
    from dyconv_deploy.runtime import ort_custom_op

    digest = hashlib.sha256()
    for path in sorted(Path(lower.__file__).parent.glob("*.py")) + [Path(ort_custom_op.__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _cache_key(layer: LayerGraph, tuning: Tuning, options: dict, environment: dict) -> str:
    fields = {"geometry": layer.geometry, "backend": tuning.backend, "batch": tuning.batch,
              "candidates": list(tuning.candidates), "options": options, "environment": environment,
              "version": __version__, "lowering": _lowering_sources_sha256()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache(path: Path, candidates: Sequence[str]) -> Optional[dict[str, float]]:
    """The cached timings, or None when absent or unreadable (then timed again)."""
    try:
        ms = json.loads(path.read_text())["ms"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(ms, dict) or set(ms) != set(candidates):
        return None
    return {name: float(ms[name]) for name in candidates}


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
