"""Export a canonical model to ONNX: one ``dyconv::DynamicConv2d`` node per dynamic conv.

Each exporter is a row of :data:`EXPORTERS`: its opset range and its steps, a list of
``(label, step)`` run by one loop; then every export is checked (``onnx.checker`` full
check, strict shape inference, contract-node inputs) and written atomically. A failure
is raised as ``export step i/n (label) failed: ... Next: ...``.
The input is named ``input``, outputs ``output`` (``output_0``, ... for several), and the
batch axis ``batch``: free unless ``dynamic_batch=False``.

The default exporter, ``auto``, tries the exporters of :data:`AUTO_ORDER` in turn: the TorchScript
trace first (about 5x faster than dynamo's ``torch.export`` and re-decomposition on an ImageNet
network), kept when it is trustworthy: no ``TracerWarning`` (Python control flow on tensor values)
and the same trace at another batch size (no branch or loop on the batch). Its graph is then
optimised into the one dynamo writes (:mod:`.static_shapes`).
"""

import io
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

import onnx
import torch
from torch import Tensor, nn

from dyconv_deploy import __version__
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export import static_shapes
from dyconv_deploy.export.fast_optimizer import fast_matching
from dyconv_deploy.export.metadata import save_atomic, stamp, state_dict_sha256
from dyconv_deploy.export.settings import (AUTO_EXPORTER, AUTO_ORDER, DEFAULT_EXPORTER, DEFAULT_OPSET,
                                           EXPORTER_CHOICES, EXPORTER_OPSETS)
from dyconv_deploy.export.translation import register_torchscript_symbolic, translation_table
from dyconv_deploy.io.onnx_file import check_and_infer
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, OP_VERSION
from dyconv_deploy.ops.onnx_schema import register_schema

# torch logs a warning per torchvision op it cannot register, onnxscript an INFO line per optimiser pass.
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")
log = logging.getLogger(__name__)
INPUT_NAME = "input"
BATCH_DIM = "batch"


class ExportError(DyconvError):
    """A step of :func:`export_onnx` failed; the message names the step and what to try next.

    ``step`` is the step's label (e.g. ``"dynamo capture"``, ``"check"``).
    """

    def __init__(self, message: str, step: str):
        super().__init__(message)
        self.step = step


class ExportRequest(NamedTuple):
    """What every step sees: the example input and the requested graph properties.

    ``strict_trace``: another exporter takes over on failure (``auto``), so a TorchScript trace
    that only warns that it may be wrong for other inputs fails instead.
    """

    example_input: Tensor
    output_names: list[str]
    opset: int
    dynamic_batch: bool
    strict_trace: bool = False


@dataclass(frozen=True)
class Exporter:
    """One ONNX exporter: the opsets it emits and its steps, each ``(label, step, next)``.

    A step maps the previous step's result (first: the model) and the request to its own
    result; the last step returns an ``onnx.ModelProto``. ``next`` is the advice on failure.
    """

    name: str
    min_opset: int
    max_opset: int
    steps: tuple[tuple[str, Callable[[object, ExportRequest], object], str], ...]


def _dynamo_capture(model: nn.Module, request: ExportRequest) -> torch.export.ExportedProgram:
    shapes = ({0: torch.export.Dim(BATCH_DIM)},) if request.dynamic_batch else None
    return torch.export.export(model, (request.example_input,), dynamic_shapes=shapes, strict=False)


def _dynamo_translate(program: torch.export.ExportedProgram, request: ExportRequest) -> onnx.ModelProto:
    with _quiet_exporter(), fast_matching():  # the exporter ends with onnxscript's optimizer
        onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=translation_table(),
                                         dynamic_shapes=({0: BATCH_DIM},) if request.dynamic_batch else None,
                                         input_names=[INPUT_NAME], output_names=request.output_names,
                                         opset_version=request.opset, verbose=False)
    return onnx_program.model_proto


@contextmanager
def _quiet_exporter():
    """Hide the exporters' log lines and deprecation warnings, unless ``-v`` asked for debug output."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    verbose = logging.getLogger("dyconv_deploy").isEnabledFor(logging.DEBUG)
    for logger in loggers:
        logger.setLevel(logging.NOTSET if verbose else logging.ERROR)
    # The TorchScript exporter turns its ONNX log on whatever `verbose` says (its setup_onnx_logging tests the
    # function _jit_is_onnx_log_enabled, not its result) and prints its whole IR graph when it fails.
    log = torch._C._jit_onnx_log
    if not verbose:
        torch._C._jit_onnx_log = lambda *args: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        torch._C._jit_onnx_log = log
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class TorchscriptExport(NamedTuple):
    """The TorchScript exporter's graph, and the signature of the trace it was made from (None: not seen)."""

    proto: onnx.ModelProto
    model: nn.Module
    trace: Optional[list[tuple]]


def _torchscript_translate(model: nn.Module, request: ExportRequest) -> TorchscriptExport:
    register_torchscript_symbolic(request.opset)
    axes = ({name: {0: BATCH_DIM} for name in [INPUT_NAME, *request.output_names]}
            if request.dynamic_batch else None)
    buffer = io.BytesIO()
    traces: list[list[tuple]] = []
    # The TorchScript exporter is deprecated since torch 2.9, still working in 2.13.
    with _quiet_exporter(), _tracer_warnings(request.strict_trace), _recording_traces(traces):
        torch.onnx.export(model, (request.example_input,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=request.output_names, opset_version=request.opset, dynamic_axes=axes,
                          custom_opsets={DOMAIN: OP_VERSION})
    trace = traces[0] if len(traces) == 1 else None
    return TorchscriptExport(onnx.load_model_from_string(buffer.getvalue()), model, trace)


@contextmanager
def _recording_traces(signatures: list) -> Iterator[None]:
    """Append the :func:`_trace_signature` of every graph ``torch.jit._get_trace_graph`` returns meanwhile.

    The TorchScript exporter traces the model with it; the batch check compares that trace with one at
    batch 1 instead of tracing the example batch a second time (a trace runs the whole forward).
    """
    trace_graph = torch.jit._get_trace_graph

    def recorded(*args, **kwargs):
        result = trace_graph(*args, **kwargs)
        signatures.append(_trace_signature(result[0]))  # before the exporter's passes rewrite the graph
        return result

    torch.jit._get_trace_graph = recorded
    try:
        yield
    finally:
        torch.jit._get_trace_graph = trace_graph


def _torchscript_batch_check(export: TorchscriptExport, request: ExportRequest) -> onnx.ModelProto:
    """With a dynamic batch: the export's trace (at the example batch) and one at batch 1 must agree.

    A trace records one run: a branch or loop on the batch size is frozen into it without a
    warning, and the graph would be wrong at other batches. Two batch sizes that trace to different
    graphs reveal it (the example batch is >= 2, see :func:`_capture_input`). ``_get_trace_graph`` is
    the graph-only trace the TorchScript exporter runs itself, with the same settings.
    """
    x = request.example_input
    if request.dynamic_batch:
        with _quiet_exporter(), _tracer_warnings(request.strict_trace):
            at_example = export.trace if export.trace is not None else _traced_signature(export.model, x)
            at_batch_1 = _traced_signature(export.model, x[:1])
        if at_example != at_batch_1:
            raise ValueError(f"the trace at batch {x.shape[0]} differs from the one at batch 1 (Python control "
                             "flow on the batch size), so the graph would be wrong at other batches.")
    return export.proto


def _traced_signature(model: nn.Module, x: Tensor) -> list[tuple]:
    """:func:`_trace_signature` of the trace of ``model(x)``, traced as the TorchScript exporter traces."""
    return _trace_signature(torch.jit._get_trace_graph(model, (x,), strict=False)[0])


@contextmanager
def _tracer_warnings(strict: bool) -> Iterator[None]:
    """With ``strict``, a ``TracerWarning`` (Python control flow on tensor values) fails the trace."""
    if not strict:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        yield
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in caught:
        if w not in tracer:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if tracer:
        raise ValueError(f"the trace may be wrong for other inputs: {str(tracer[0].message).splitlines()[0]}")


def _trace_signature(graph: torch.Graph) -> list[tuple]:
    """Per node of a traced graph: kind, constant value (tensor constants: shape), producers of the inputs."""
    producers = {}
    signature = []
    for index, node in enumerate(graph.nodes()):
        constant = None
        if node.kind() == "prim::Constant":
            value = node.output().toIValue()
            constant = tuple(value.shape) if isinstance(value, Tensor) else repr(value)
        signature.append((node.kind(), constant, tuple(producers.get(v.unique(), -1) for v in node.inputs())))
        producers.update((v.unique(), index) for v in node.outputs())
    return signature


def _optimize(proto: onnx.ModelProto, request: ExportRequest) -> onnx.ModelProto:
    with _quiet_exporter():
        return static_shapes.optimize(proto)


_TRACEABLE = "make forward() traceable (no Python branching on tensor values or on the batch size)"
_TRACEBACK = "run with -v for the exporter's traceback"
EXPORTERS = {e.name: e for e in (
    Exporter("dynamo", *EXPORTER_OPSETS["dynamo"], (
        ("dynamo capture", _dynamo_capture, _TRACEABLE),
        ("dynamo translate", _dynamo_translate, _TRACEBACK),
    )),
    Exporter("torchscript", *EXPORTER_OPSETS["torchscript"], (
        ("torchscript trace and translate", _torchscript_translate, _TRACEABLE + ", or " + _TRACEBACK),
        ("torchscript batch check", _torchscript_batch_check, _TRACEABLE),
        ("optimize", _optimize, _TRACEBACK),
    )),
)}


def export_onnx(model: nn.Module, example_input: Tensor, path: Optional[str | os.PathLike] = None, *,
                exporter: str = DEFAULT_EXPORTER, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                strategy: str = "plugin") -> onnx.ModelProto:
    """Export ``model`` (float32) to ONNX and return the checked, shape-inferred ``ModelProto``.

    Args:
        example_input: ``[N, C, H, W]``; fixes every axis but the batch, which stays free as
            ``batch`` when ``dynamic_batch`` and is fixed to N otherwise.
        path: where to write the model atomically (nothing is written when None).
        exporter: ``"auto"`` (TorchScript when its trace is trustworthy, else dynamo; see the module
            docstring), ``"dynamo"`` (opsets 18-23) or ``"torchscript"`` (opsets 17-20). The metadata
            records the one that produced the graph.
        strategy: recorded in the metadata (the raw export is the ``plugin`` graph).
    Raises:
        ExportError: naming the failed step (of the last exporter tried) and what to try next.
    """
    candidates = _candidates(exporter, opset)
    register_schema()
    model = model.eval()
    x = _capture_input(example_input, dynamic_batch)
    with torch.no_grad():
        output_names = _output_names(model, x)
        for position, spec in enumerate(candidates):
            fallback = candidates[position + 1] if position + 1 < len(candidates) else None
            request = ExportRequest(x, output_names, opset, dynamic_batch, strict_trace=fallback is not None)
            alternatives = [] if exporter == AUTO_EXPORTER else [e.name for e in _supporting(opset) if e is not spec]
            try:
                result = _run_steps(spec, model, request, alternatives, path is not None)
                break
            except ExportError as exc:
                if fallback is None:
                    raise
                # what failed, without the advice for a last exporter: the next one is tried
                log.info("the %s exporter cannot take this model (%s); exporting with %s instead", spec.name,
                         str(exc).split(" Next: ")[0], fallback.name)
    total = len(spec.steps) + (3 if path is not None else 2)
    with _step(total - (2 if path is not None else 1), total, "check",
               "the exported graph is invalid: run with -v and report it together with the model."):
        proto = check_model(result)
        _check_opset(proto, opset)
    with _step(total - (1 if path is not None else 0), total, "metadata", "run with -v and report it."):
        stamp(proto, version=__version__, strategy=strategy, opset=opset, exporter=spec.name,
              source_sha256=state_dict_sha256(model))
    if path is not None:
        with _step(total, total, "write", f"check that {path} is writable."):
            save_atomic(proto, path)
    return proto


def _run_steps(spec: Exporter, model: nn.Module, request: ExportRequest, alternatives: list[str],
               writes: bool) -> object:
    """The exporter's steps in order, numbered among all of this export's steps; returns the last result."""
    total = len(spec.steps) + (3 if writes else 2)
    suffix = "".join(f", or try --exporter {name}" for name in alternatives) + "."
    result: object = model
    for index, (label, step, advice) in enumerate(spec.steps, start=1):
        with _step(index, total, label, advice + suffix):
            result = step(result, request)
    return result


def check_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` full check, strict shape inference and the contract-node rule; returns the inferred model.

    Contract rule: every ``dyconv::DynamicConv2d`` takes W (and B) from initializers, so
    they are constants for the lowering passes and engines.
    """
    register_schema()
    inferred = check_and_infer(proto, full_check=True, check_type=True, strict_mode=True, data_prop=True)
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    for node in contract_nodes(proto):
        params = [name for name in node.input[2:4] if name]
        if not set(params) <= constants:
            raise ValueError(f"{node.name or OP_TYPE}: expert kernels/biases {params} must be initializers, "
                             "not computed in the graph")
    return inferred


def contract_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``dyconv::DynamicConv2d`` nodes of the main graph, in graph order."""
    return [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


@contextmanager
def _step(index: int, total: int, label: str, advice: str):
    try:
        yield
    except DyconvError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        summary = (lines[0][:300] + ("…" if len(lines[0]) > 300 else "")) if lines else type(exc).__name__
        raise ExportError(f"export step {index}/{total} ({label}) failed: {summary} Next: {advice}",
                          label) from exc


def check_exporter(name: str, opset: int) -> None:
    """Refuse an unknown exporter, or one (``auto``: every one) that cannot emit ``opset``: a one-line
    :class:`DyconvError` naming the opset or exporter to pass, before any model is loaded."""
    _candidates(name, opset)


def _candidates(name: str, opset: int) -> list[Exporter]:
    """The exporters ``name`` tries, in order: one, or for ``auto`` those of :data:`AUTO_ORDER` emitting ``opset``."""
    if name != AUTO_EXPORTER:
        return [_exporter(name, opset)]
    usable = [spec for spec in _supporting(opset) if spec.name in AUTO_ORDER]
    if not usable:
        low = min(e.min_opset for e in EXPORTERS.values())
        high = max(e.max_opset for e in EXPORTERS.values())
        raise DyconvError(f"no exporter emits opset {opset}: pass --opset {min(max(opset, low), high)}")
    return sorted(usable, key=lambda spec: AUTO_ORDER.index(spec.name))


def _supporting(opset: int) -> list[Exporter]:
    return [e for e in EXPORTERS.values() if e.min_opset <= opset <= e.max_opset]


def _exporter(name: str, opset: int) -> Exporter:
    if name not in EXPORTERS:
        raise DyconvError(f"unknown exporter {name!r}; choose one of: {', '.join(EXPORTER_CHOICES)}")
    spec = EXPORTERS[name]
    if not spec.min_opset <= opset <= spec.max_opset:
        others = [e.name for e in _supporting(opset)]
        hint = f", or use --exporter {others[0]}" if others else ""
        raise DyconvError(f"the {name} exporter emits opsets {spec.min_opset}-{spec.max_opset}, not {opset}: "
                          f"pass --opset {min(max(opset, spec.min_opset), spec.max_opset)}{hint}")
    return spec


def check_image_shape(shape) -> tuple[int, int, int, int]:
    """``shape`` as ``(N, C, H, W)``; any other rank is a one-line :class:`DyconvError`."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise DyconvError(f"the input shape must be N x C x H x W, got {'x'.join(map(str, shape))}")
    return shape


def _capture_input(example_input: Tensor, dynamic_batch: bool) -> Tensor:
    """``torch.export`` specialises a batch of 1, so a dynamic batch is captured with 2 samples."""
    check_image_shape(example_input.shape)
    if dynamic_batch and example_input.shape[0] == 1:
        return example_input.expand(2, *example_input.shape[1:]).contiguous()
    return example_input


def _output_names(model: nn.Module, x: Tensor) -> list[str]:
    outputs = model(x)
    if isinstance(outputs, Tensor):
        return ["output"]
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, Tensor) for o in outputs):
        return [f"output_{i}" for i in range(len(outputs))]
    raise DyconvError(f"forward() must return a tensor or a tuple of tensors, got {type(outputs).__name__}")


def _check_opset(proto: onnx.ModelProto, opset: int) -> None:
    emitted = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if emitted != opset:
        raise ValueError(f"the exporter produced opset {emitted}, not the requested {opset}")
