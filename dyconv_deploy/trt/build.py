"""ONNX -> TensorRT engine (+ JSON sidecar) through the TensorRT Python API, TensorRT 10 or 11.

Flow of :func:`build_engine`: load the plugin library (its creator must be registered
before parsing) -> parse the ONNX -> one optimisation profile (batch range from
``min/opt/max_batch``, or explicit ``shapes``) -> precision -> timing cache -> build with a
progress display -> write the engine, the timing cache and the sidecar atomically.

The builder keeps detailed layer information (``ProfilingVerbosity.DETAILED``), so that the
sidecar can record which tactic TensorRT's autotuner picked for every plugin layer: for a
DynamicConv2d layer its ``dyconv::Algo`` value, named as in ``plugins/kernels`` (``plugin_tactics``,
read back from the built engine with TensorRT's engine inspector).

Precision: one route on every version. The network is strongly typed (TensorRT 10:
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11: always), so tensor types come
from the ONNX, and ``fp16=True`` first converts the ONNX to fp16 with
:func:`dyconv_deploy.trt.fp16.convert_to_fp16` (I/O and the attention branch stay fp32). The
weakly typed ``BuilderFlag.FP16`` (deprecated in 10.12, gone in 11) is never used: it would let
TensorRT run the attention softmax and the plugin's A input in fp16.
"""

import json
import logging
import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.trt.sidecar import atomic_write_bytes, current_environment, file_sha256, write_sidecar

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
_LOADED_PLUGINS: set[str] = set()


@dataclass(frozen=True)
class ShapeRange:
    """The min/opt/max shapes of one network input in an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shapes(specs: list[str]) -> dict[str, ShapeRange]:
    """Parse ``--shapes`` values: ``NAME:DIMS`` (fixed) or ``NAME:MIN,OPT,MAX``, dims as ``1x3x224x224``.

    >>> parse_shapes(["x:1x3x8x8,4x3x8x8,8x3x8x8"])["x"].max
    (8, 3, 8, 8)
    """
    ranges = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        parts = dims.split(",")
        if not sep or not name or len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+(x\d+)*", p) for p in parts):
            raise DyconvError(f"cannot read --shapes {spec!r}: expected NAME:DIMS or NAME:MIN,OPT,MAX with dims "
                              "like 1x3x224x224")
        shapes = [tuple(int(d) for d in p.split("x")) for p in parts]
        if len({len(s) for s in shapes}) != 1:
            raise DyconvError(f"--shapes {spec!r}: min, opt and max must have the same rank")
        ranges[name] = ShapeRange(*(shapes * 3 if len(shapes) == 1 else shapes))
    return ranges


def profile_shapes(network_inputs: dict[str, tuple[int, ...]], *, min_batch: int, opt_batch: int, max_batch: int,
                   shapes: dict[str, ShapeRange] | None = None) -> dict[str, ShapeRange]:
    """The optimisation profile for every network input.

    Args:
        network_inputs: input name -> shape as the parser reports it (``-1`` = dynamic).
        min_batch, opt_batch, max_batch: the range for a dynamic leading (batch) dimension.
        shapes: explicit ranges that override the batch rule for the inputs they name.

    Every dynamic dimension other than the batch must come from ``shapes``; explicit
    ranges must match the input's rank and static dimensions.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise DyconvError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}, {opt_batch}, "
                          f"{max_batch}")
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(network_inputs))
    if unknown:
        raise DyconvError(f"--shapes names {', '.join(unknown)}, which the network does not have; its inputs are "
                          f"{', '.join(network_inputs)}")
    profile = {}
    for name, dims in network_inputs.items():
        profile[name] = (_check_range(name, dims, shapes[name]) if name in shapes
                         else _batch_range(name, dims, min_batch, opt_batch, max_batch))
    return profile


def _batch_range(name: str, dims: tuple[int, ...], min_batch: int, opt_batch: int, max_batch: int) -> ShapeRange:
    rest = dims[1:]
    if any(d < 0 for d in rest):
        shown = "x".join("?" if d < 0 else str(d) for d in dims)
        raise DyconvError(f"input {name} has shape {shown} with dynamic dimensions besides the batch; give its "
                          f"range with --shapes {name}:MIN,OPT,MAX")
    if dims and dims[0] >= 0:  # static batch: the profile is the one shape
        return ShapeRange(dims, dims, dims)
    return ShapeRange((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))


def _check_range(name: str, dims: tuple[int, ...], shape_range: ShapeRange) -> ShapeRange:
    if len(shape_range.min) != len(dims):
        raise DyconvError(f"--shapes {name}: rank {len(shape_range.min)} but the input has rank {len(dims)}")
    for axis, (d, lo, mid, hi) in enumerate(zip(dims, shape_range.min, shape_range.opt, shape_range.max)):
        if d >= 0 and not d == lo == mid == hi:
            raise DyconvError(f"--shapes {name}: dimension {axis} is fixed at {d} in the network")
        if not lo <= mid <= hi:
            raise DyconvError(f"--shapes {name}: dimension {axis} needs min <= opt <= max, got {lo}, {mid}, {hi}")
    return shape_range


def tensorrt_major(trt) -> int:
    """Major version of the imported ``tensorrt`` module."""
    return int(trt.__version__.split(".")[0])


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, min_batch: int = 1,
                 opt_batch: int = 8, max_batch: int = 32, shapes: dict[str, ShapeRange] | None = None,
                 fp16: bool = False, workspace_mb: int = 1024, timing_cache: str | os.PathLike | None = None,
                 plugin_library: str | os.PathLike | None = None, embed_plugin: bool = False,
                 progress: bool = True) -> Path:
    """Build a serialised TensorRT engine from ``onnx_path`` and write it with its sidecar.

    Args:
        onnx_path: the model (any lowering strategy; ``plugin`` needs ``plugin_library``).
        engine_path: where the plan goes; the sidecar is ``<engine_path>.json``.
        min_batch, opt_batch, max_batch: profile range of the dynamic batch dimension.
        shapes: explicit per-input ranges (see :func:`parse_shapes`), overriding the batch rule.
        fp16: build from the fp16 conversion of the ONNX (attention branch and I/O kept fp32).
        workspace_mb: workspace memory pool limit in MiB.
        timing_cache: file read before the build (when it exists) and rewritten after it.
        plugin_library: the DynamicConv2d plugin ``.so``, loaded before parsing; its sha256 goes
            into the sidecar and the runtime loads the same file again. Default for graphs with
            contract nodes: :func:`dyconv_deploy.trt.plugin.locate_plugin_library`.
        embed_plugin: serialise the plugin library into the plan. TensorRT does so only for
            version-compatible engines, so this also sets ``VERSION_COMPATIBLE`` and
            ``EXCLUDE_LEAN_RUNTIME``; such a plan loads only with ``engine_host_code_allowed``.
        progress: show a rich progress display of the builder phases.

    Returns the engine path. Raises :class:`DyconvError` when TensorRT is missing, the ONNX
    does not parse or the build fails.
    """
    trt = require("tensorrt", for_="build-engine")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise DyconvError(f"ONNX file not found: {onnx_path}")
    logger = trt.Logger(trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING)
    if plugin_library is None and _has_contract_nodes(onnx_path):
        from dyconv_deploy.trt.plugin import locate_plugin_library

        plugin_library = locate_plugin_library()
    if plugin_library is not None:
        load_plugin_library(trt, plugin_library)
    elif embed_plugin:
        raise DyconvError(f"--embed-plugin needs a plugin library, but {onnx_path.name} has no DynamicConv2d node "
                          "and --plugin was not given")
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory(prefix="dyconv-build-") as scratch:
        source = _fp16_onnx(onnx_path, Path(scratch)) if fp16 else onnx_path
        _parse(parser, source)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer tactics for the sidecar
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profile = profile_shapes(inputs, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, shapes=shapes)
    _add_profile(builder, config, profile)
    cache = _attach_timing_cache(config, timing_cache)
    if embed_plugin:
        _embed_plugin(trt, config, Path(plugin_library))

    started = time.perf_counter()
    with _progress_monitor(trt, config, enabled=progress):
        blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if blob is None:
        raise DyconvError(f"TensorRT could not build an engine from {onnx_path}; rerun with -v for the builder log")

    atomic_write_bytes(engine_path, bytes(blob))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    environment = current_environment(trt, plugin_library)
    write_sidecar(engine_path, {
        **environment,
        "plugin_serialized": embed_plugin,
        "profiles": [{name: r.as_dict() for name, r in profile.items()}],
        "inputs": [_io_record(trt, network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_io_record(trt, network.get_output(i)) for i in range(network.num_outputs)],
        "precision": "fp16" if fp16 else "fp32",
        "onnx_sha256": file_sha256(onnx_path),
        "plugin_tactics": plugin_tactics(trt, logger, bytes(blob), host_code=embed_plugin),
        "build_seconds": round(seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    log.info("built %s in %.1f s", engine_path, seconds)
    return engine_path


def plugin_tactics(trt, logger, plan: bytes, *, host_code: bool = False) -> list[dict] | None:
    """The tactic of every plugin layer of ``plan``, from TensorRT's engine inspector (the plan must be built with
    ``ProfilingVerbosity.DETAILED``): ``[{"layer": name, "tactic": value, "algo": name or None}]``, ``algo`` the
    ``dyconv::Algo`` name of the value (DynamicConv2d's tactics; None for a value outside it). None, with a
    warning, when the plan cannot be inspected; ``host_code``: the plan carries a plugin library."""
    from dyconv_deploy.ops.cuda import ALGOS

    try:
        runtime = trt.Runtime(logger)
        runtime.engine_host_code_allowed = host_code
        engine = runtime.deserialize_cuda_engine(plan)
        inspector = engine.create_engine_inspector()
        layers = [json.loads(inspector.get_layer_information(i, trt.LayerInformationFormat.JSON))
                  for i in range(engine.num_layers)]
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        log.warning("could not read the plugin layers' tactics from the engine (%s); the sidecar has none", exc)
        return None
    tactics = []
    for layer in layers:
        if not isinstance(layer, dict) or "Plugin" not in str(layer.get("LayerType", "")):
            continue
        value = layer.get("TacticValue")
        tactic = int(value, 0) if isinstance(value, str) else value
        tactics.append({"layer": layer.get("Name"), "tactic": tactic,
                        "algo": ALGOS[tactic] if isinstance(tactic, int) and 0 <= tactic < len(ALGOS) else None})
    return tactics


def load_plugin_library(trt, path: str | os.PathLike) -> None:
    """Register the plugin creators of the library at ``path`` with TensorRT (before parsing or deserialising)."""
    from dyconv_deploy.trt.plugin import open_plugin_library

    path = Path(path).resolve()
    if str(path) in _LOADED_PLUGINS:  # TensorRT refuses to register the same creators twice
        return
    open_plugin_library(path)  # checks the file and its getCreators/setLoggerFinder exports first
    if trt.get_plugin_registry().load_library(str(path)) is None:
        raise DyconvError(f"TensorRT could not load the plugin library {path} (does it export getCreators?)")
    _LOADED_PLUGINS.add(str(path))


def _strongly_typed(trt) -> int:
    """``create_network`` flags of a strongly typed network: the flag's bit on 10.x; 0 on 11, where the
    flag is deprecated and every network is strongly typed."""
    if tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _has_contract_nodes(onnx_path: Path) -> bool:
    import onnx

    from dyconv_deploy.export.onnx_export import contract_nodes

    return bool(contract_nodes(onnx.load(str(onnx_path), load_external_data=False)))


def _fp16_onnx(onnx_path: Path, scratch: Path) -> Path:
    import onnx

    from dyconv_deploy.trt.fp16 import convert_to_fp16

    converted = scratch / f"{onnx_path.stem}.fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(onnx_path))), str(converted))
    return converted


def _parse(parser, onnx_path: Path) -> None:
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DyconvError(f"TensorRT's ONNX parser rejected {onnx_path}: {'; '.join(errors) or 'no details'}")


def _io_record(trt, tensor) -> dict:
    """Name, shape (-1 = dynamic) and numpy dtype name of a network I/O tensor, for the sidecar."""
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": np.dtype(trt.nptype(tensor.dtype)).name}


def _add_profile(builder, config, profile: dict[str, ShapeRange]) -> None:
    trt_profile = builder.create_optimization_profile()
    for name, shape_range in profile.items():
        trt_profile.set_shape(name, shape_range.min, shape_range.opt, shape_range.max)
    config.add_optimization_profile(trt_profile)


def _attach_timing_cache(config, path: str | os.PathLike | None):
    existing = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(existing)
    if cache is None:  # TensorRT cannot read the blob at all: another TensorRT version, or a damaged file
        log.warning("timing cache %s cannot be read by this TensorRT (another version wrote it, or it is damaged); "
                    "starting a fresh one", path)
    elif config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    else:  # readable, but tuned on another GPU or TensorRT
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a fresh one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _embed_plugin(trt, config, plugin_library: Path) -> None:
    """Serialise the plugin library into the plan: a version-compatible engine without the lean runtime.

    NvInfer.h: ``setPluginsToSerialize`` sets "the plugin libraries to be serialized with
    version-compatible engines"; any other engine ignores the list and needs the library at run time.
    """
    config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)  # the runtime that loads the plan runs it
    config.plugins_to_serialize = [str(plugin_library.resolve())]


@contextmanager
def _progress_monitor(trt, config, *, enabled: bool):
    """Show the builder's phases as rich progress bars while the block runs (``IProgressMonitor``, TensorRT 10+)."""
    if not enabled or not hasattr(trt, "IProgressMonitor"):
        yield
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        config.progress_monitor = _rich_monitor(trt, progress)
        try:
            yield
        finally:
            config.progress_monitor = None


def _rich_monitor(trt, progress):
    """An ``IProgressMonitor`` that maps each builder phase to a rich task (thread-safe, never cancels)."""

    class RichProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._tasks: dict[str, tuple[int, int]] = {}  # phase -> (task id, depth)
            self._lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = self._tasks[parent_phase][1] + 1 if parent_phase in self._tasks else 0
                task = progress.add_task("  " * depth + phase_name, total=num_steps)
                self._tasks[phase_name] = (task, depth)

        def step_complete(self, phase_name, step):
            with self._lock:
                if phase_name in self._tasks:
                    progress.update(self._tasks[phase_name][0], completed=step + 1)
            return True

        def phase_finish(self, phase_name):
            with self._lock:
                if phase_name in self._tasks:
                    progress.remove_task(self._tasks.pop(phase_name)[0])

    return RichProgressMonitor()
