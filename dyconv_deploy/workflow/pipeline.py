"""The ``export`` and ``verify`` commands as library functions: the stages driven in order.

``export_model``: load -> convert -> export -> checker -> lower -> write -> verify, printing
a stage checklist; ``verify_model``: an existing ONNX file or engine against its PyTorch model.
Both raise :class:`~dyconv_deploy.errors.VerificationError` (exit 1) when an output is
over tolerance, after printing the error table. Options that cannot go together raise
:class:`OptionConflict` before any stage runs.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import onnx
import torch
from rich.console import Console
from torch import nn

from dyconv_deploy.bench.layer_tuning import NOT_TUNED, TUNED_BACKENDS, tune_layers
from dyconv_deploy.convert import convert_model
from dyconv_deploy.errors import DyconvError, VerificationError
from dyconv_deploy.export.graph_check import check_graph
from dyconv_deploy.export.metadata import read_metadata, save_atomic, stamp, state_dict_sha256
from dyconv_deploy.export.onnx_export import (ExportError, check_exporter, check_image_shape, contract_nodes,
                                              export_onnx)
from dyconv_deploy.export.report import Checklist, comparison_table
from dyconv_deploy.export.settings import (AUTO_STRATEGY, DEFAULT_BATCHES, DEFAULT_EXPORTER, DEFAULT_OPSET,
                                           EXPORT_STRATEGIES, EXPORT_TARGETS, VERIFY_BACKENDS)
from dyconv_deploy.io import load_model
from dyconv_deploy.io.onnx_file import read_onnx
from dyconv_deploy.lower import STATIC_BATCH_REASON, lower
from dyconv_deploy.lower.per_layer import lower_per_layer
from dyconv_deploy.runtime import is_engine
from dyconv_deploy.runtime.base import TensorSpec
from dyconv_deploy.tolerance import TOLERANCES, Comparison, Tolerance
from dyconv_deploy.trt.ort_trt import ORT_TRT_DOMAIN, to_ort_trt
from dyconv_deploy.verify import open_runtime, verify_onnx

EXPORT_STAGES = ("load", "convert", "export", "checker", "lower", "write", "verify")
VERIFY_STAGES = ("load", "checker", "verify")


class OptionConflict(DyconvError):
    """Options that cannot go together, refused before any stage runs.

    ``fixes`` are the alternatives that resolve the conflict, each a mapping of
    :func:`export_model` parameter names to values (the CLI options have the same names, so
    the CLI can print each fix as a complete command line). The message spells them as
    keyword arguments.
    """

    def __init__(self, reason: str, fixes: Sequence[Mapping[str, object]]):
        self.reason = reason
        self.fixes = [dict(fix) for fix in fixes]
        keywords = (", ".join(f"{name}={value!r}" for name, value in fix.items()) for fix in self.fixes)
        super().__init__(f"{reason}. Next: {' or '.join(keywords)}")


def check_export_options(strategy: str, dynamic_batch: bool, target: str = "any", backend: str = "auto") -> None:
    """Refuse a combination of :func:`export_model` options before any work starts.

    Raises:
        DyconvError: an unknown strategy, target or backend; OptionConflict: ``grouped`` with a dynamic batch,
            the ``ort-trt`` target without the ``plugin`` strategy, or ``auto`` for an engine it cannot time on.
    """
    if strategy not in EXPORT_STRATEGIES:
        raise DyconvError(f"unknown strategy {strategy!r}; choose one of: {', '.join(EXPORT_STRATEGIES)}")
    if target not in EXPORT_TARGETS:
        raise DyconvError(f"unknown export target {target!r}; choose one of: {', '.join(EXPORT_TARGETS)}")
    if backend not in VERIFY_BACKENDS:
        raise DyconvError(f"unknown backend {backend!r}; choose one of: {', '.join(VERIFY_BACKENDS)}")
    if strategy == AUTO_STRATEGY and backend not in ("auto", *TUNED_BACKENDS):
        raise OptionConflict(f"--strategy auto times each layer on {', '.join(TUNED_BACKENDS)}, not on {backend}"
                             f"{f' ({NOT_TUNED[backend]})' if backend in NOT_TUNED else ''}",
                             [{"strategy": "plugin"}, {"backend": "ort-cpu"}])
    if target == "ort-trt" and strategy != "plugin":
        raise OptionConflict(f"the ort-trt target runs each dynamic conv on the TensorRT plugin, so it needs the "
                             f"plugin strategy, not {strategy}", [{"strategy": "plugin"}])
    if strategy == "grouped" and dynamic_batch:
        raise OptionConflict(f"the grouped strategy needs a static batch: {STATIC_BATCH_REASON}",
                             [{"dynamic_batch": False}, {"strategy": "experts"}])


@dataclass
class ExportResult:
    """The written model and the verification results (empty when verification was skipped)."""

    path: Path
    model: onnx.ModelProto
    comparisons: list[Comparison] = field(default_factory=list)


def export_model(spec: str, output: str | os.PathLike, input_shape: Sequence[int], *, dynamic_batch: bool = True,
                 strategy: str = "plugin", exporter: str = DEFAULT_EXPORTER, opset: int = DEFAULT_OPSET,
                 arch: Optional[str] = None, trust_pickle: bool = False, adapters: Sequence[str] = (),
                 verify: bool = True, batches: Sequence[int] = DEFAULT_BATCHES,
                 tolerance: Tolerance = TOLERANCES["fp32"], target: str = "any", backend: str = "auto",
                 console: Optional[Console] = None) -> ExportResult:
    """Export MODEL ``spec`` to ``output`` with ``strategy`` and verify it against PyTorch.

    Args:
        input_shape: ``[N, C, H, W]``; N is the example batch and, with ``dynamic_batch=False``,
            the graph's fixed batch.
        adapters: ``file.py:ClassName`` converter adapters for foreign dynamic convs (``--adapter``).
        batches: batch sizes verified for a dynamic batch (a static graph is verified at N).
        target: ``any``, or ``ort-trt``: write the contract nodes as ``trt.plugins::DynamicConv2d`` for ONNX
            Runtime's TensorRT provider (:func:`~dyconv_deploy.trt.ort_trt.to_ort_trt`); the verify stage then
            checks the ``plugin`` graph it was made from, since only the nodes' domain differs and no CPU
            engine runs the TensorRT provider's domain.
        backend: the engine the verify stage runs the graph on (one of
            :data:`~dyconv_deploy.export.settings.VERIFY_BACKENDS`); ``strategy="auto"`` also times each layer on
            it (``auto``: ``ort-cpu``) at the batch of ``input_shape``, and prints the per-layer table.
    Raises:
        OptionConflict: options that cannot go together (before any stage runs); DyconvError: a stage
            failed (the checklist names it); VerificationError: over tolerance.
    """
    check_export_options(strategy, dynamic_batch, target, backend)
    check_exporter(exporter, opset)
    shape = check_image_shape(input_shape)
    console = console or Console()
    checklist = Checklist(EXPORT_STAGES)
    try:
        return _export(spec, Path(output), shape, dynamic_batch, strategy, exporter, opset, arch,
                       trust_pickle, adapters, verify, batches, tolerance, target, backend, console, checklist)
    finally:
        console.print(checklist.table(f"export {spec} -> {output}"))


def _export(spec, output, shape, dynamic_batch, strategy, exporter, opset, arch, trust_pickle, adapters, verify,
            batches, tolerance, target, backend, console, checklist) -> ExportResult:
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with checklist.stage("load") as row:
        source = load_model(spec, arch=arch, trust_pickle=trust_pickle)
        row.detail = type(source).__name__
    with checklist.stage("convert") as row:
        model, row.detail = _convert(source, example, adapters)
    check_error = None
    with checklist.stage("export") as row, console.status(f"export: {exporter} exporter, opset {opset}"):
        try:
            proto = export_onnx(model, example, None, exporter=exporter, opset=opset, dynamic_batch=dynamic_batch)
        except ExportError as exc:
            if exc.step != "check":
                raise
            check_error = exc  # the export itself worked: the failure belongs to the checker row
        used = exporter if check_error else read_metadata(proto)["exporter"]
        row.detail = f"{used}, opset {opset}, batch {'dynamic' if dynamic_batch else shape[0]}"
    with checklist.stage("checker") as row:
        if check_error is not None:
            raise check_error
        row.detail = (f"full check and strict shape inference passed; {len(contract_nodes(proto))} "
                      "dyconv::DynamicConv2d node(s)")
    if strategy == AUTO_STRATEGY:
        backend = TUNED_BACKENDS[0] if backend == "auto" else backend
    with checklist.stage("lower") as row:
        static_batch = None if dynamic_batch else shape[0]
        if strategy == AUTO_STRATEGY:
            proto, row.detail = _lower_per_layer(proto, backend, shape[0], static_batch, console)
        else:
            proto, row.detail = _lower(proto, strategy, static_batch)
        checked = proto  # what the verify stage runs
        if target == "ort-trt":
            proto = to_ort_trt(proto)
            row.detail += f", as {ORT_TRT_DOMAIN}::DynamicConv2d for ort-trt"
    stamp(proto, strategy=strategy, source_sha256=state_dict_sha256(source))
    with checklist.stage("write") as row:
        save_atomic(proto, output)
        row.detail = f"{output} ({output.stat().st_size / 1e6:.2f} MB)"
    result = ExportResult(output, proto)
    if not verify:
        checklist.skip("verify", "skipped (--no-verify)")
    elif strategy == "static":
        checklist.skip("verify", "skipped: the static baseline drops the attention branch, so it is not "
                                 "numerically equivalent")
    else:
        result.comparisons = _verify(checklist, console, source, checked, shape,
                                     batches if dynamic_batch else [shape[0]], tolerance, backend)
    return result


def verify_model(spec: str, model_file: str | os.PathLike, *, batches: Sequence[int] = DEFAULT_BATCHES,
                 tolerance: Tolerance = TOLERANCES["fp32"], backend: str = "auto", arch: Optional[str] = None,
                 trust_pickle: bool = False, console: Optional[Console] = None,
                 runtime_options: Optional[dict] = None) -> list[Comparison]:
    """Check an ONNX file or TensorRT engine against MODEL ``spec``; the input shape comes from the file.

    A dynamic batch is run at each of ``batches``, a static one at its own batch. ``backend``:
    one of :data:`~dyconv_deploy.export.settings.VERIFY_BACKENDS` (``auto``: TensorRT for an engine,
    onnx.reference for a plugin graph, ONNX Runtime CPU otherwise); ``runtime_options`` go to its
    runtime (e.g. ``{"precision": "bf16", "expert_dtype": "bf16"}`` for ``openvino``).
    """
    console = console or Console()
    checklist = Checklist(VERIFY_STAGES)
    engine = is_engine(model_file)
    try:
        with checklist.stage("load") as row:
            model = load_model(spec, arch=arch, trust_pickle=trust_pickle)
            if engine and not Path(model_file).is_file():
                raise DyconvError(f"engine not found: {model_file}")
            source = model_file if engine else read_onnx(model_file)
            row.detail = f"{type(model).__name__} and {model_file}"
        if engine:
            checklist.skip("checker", "a TensorRT engine (its sidecar is checked when it loads)")
        else:
            with checklist.stage("checker") as row:
                check_graph(source)
                row.detail = "onnx.checker full check, strict shape inference and contract shapes passed"
        return _verify(checklist, console, model, source, None, batches, tolerance, backend, runtime_options or {})
    finally:
        console.print(checklist.table(f"verify {spec} against {model_file}"))


def _convert(model: nn.Module, example: torch.Tensor, adapters: Sequence[str]) -> tuple[nn.Module, str]:
    converted, report = convert_model(model, example, adapters=list(adapters))
    report.raise_for_unknown()
    return converted, report.summary()


def _lower(proto: onnx.ModelProto, strategy: str, static_batch: Optional[int]) -> tuple[onnx.ModelProto, str]:
    lowered = lower(proto, strategy, static_batch=static_batch)
    return lowered, f"{strategy}: {len(lowered.graph.node)} nodes, {len(contract_nodes(lowered))} dyconv::DynamicConv2d"


def _lower_per_layer(proto: onnx.ModelProto, backend: str, batch: int, static_batch: Optional[int],
                     console: Console) -> tuple[onnx.ModelProto, str]:
    """``--strategy auto``: time each layer's strategies on ``backend`` at ``batch``, print the table, lower."""
    with console.status(f"auto: timing the layers on {backend}") as status:
        tuning = tune_layers(proto, backend, batch, static_batch=static_batch is not None, progress=status.update)
    console.print(tuning.table())
    lowered = lower_per_layer(proto, tuning.choices(), static_batch=static_batch)
    stamp(lowered, tuned_for=f"{backend} at batch {batch}")
    return lowered, f"auto: {tuning.summary()}; {len(lowered.graph.node)} nodes"


def _verify(checklist: Checklist, console: Console, model: nn.Module, source: onnx.ModelProto | str | os.PathLike,
            shape: Optional[Sequence[int]], batches: Sequence[int], tolerance: Tolerance,
            backend: str = "auto", runtime_options: Optional[dict] = None) -> list[Comparison]:
    """The verify stage; ``shape=None`` takes the input shape from the model file (a fixed batch
    replaces ``batches``)."""
    with checklist.stage("verify") as row, open_runtime(source, backend, **(runtime_options or {})) as runtime:
        asked = ""
        if shape is None:
            shape, dynamic = _input_shape(runtime.input_specs)
            if not dynamic and list(batches) != [shape[0]]:
                asked = f" (fixed in the graph, not {','.join(map(str, batches))})"
            batches = batches if dynamic else [shape[0]]
        comparisons = verify_onnx(model, runtime, shape, batches, tolerance)
        console.print(comparison_table(comparisons, runtime.backend))
        failed = [c.name for c in comparisons if not c.passed]
        settings = "".join(f", {key} {value}" for key, value in (runtime_options or {}).items())
        row.detail = (f"{runtime.backend}{settings}, batch {','.join(map(str, batches))}{asked}: "
                      f"{len(comparisons) - len(failed)}/{len(comparisons)} within atol={tolerance.atol:g} "
                      f"rtol={tolerance.rtol:g}")
        if failed:
            worst = max(comparisons, key=lambda c: c.tolerance_used)
            raise VerificationError(f"{', '.join(failed)} over tolerance (worst {worst.name}: max abs error "
                                    f"{worst.max_abs:.3g}, {worst.tolerance_used:.3g}x the tolerance; smallest "
                                    f"passing atol {worst.required_atol:.3g} at rtol {tolerance.rtol:g})")
    return comparisons


def _input_shape(specs: Sequence[TensorSpec]) -> tuple[tuple[int, ...], bool]:
    """``([N, C, H, W], batch is dynamic)`` of the single input (N = 1 when dynamic)."""
    if len(specs) != 1:
        raise DyconvError(f"verify handles models with one input; this one has {len(specs)}: "
                          f"{[spec.name for spec in specs]}")
    spec = specs[0]
    fixed = [isinstance(d, int) and d > 0 for d in spec.shape]
    if not spec.shape or not all(fixed[1:]):
        raise DyconvError(f"input {spec} needs fixed sizes except the batch; re-export with a fixed --input-shape")
    return (spec.shape[0] if fixed[0] else 1, *spec.shape[1:]), not fixed[0]
