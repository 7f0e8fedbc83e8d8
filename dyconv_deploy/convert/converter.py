"""``convert_model``: replace every recognised foreign dynamic conv by its canonical layer.

Steps: copy the model (eval mode); walk it top-down and ask each adapter whether a module
matches (a matched module's children are not visited); record each matched module's inputs
during one forward of the example input; build each canonical layer, check it against the
original on random inputs of the recorded shapes, and put it in place; then look for
convolutions whose weight still depends on the input (:mod:`dyconv_deploy.convert.detect`) and
try to recognise each of those layers from its ``torch.fx`` graph
(:mod:`dyconv_deploy.convert.traced`: the family ``traced``), checked the same way, as well as the
modules that may mix the outputs of static expert convs (a layer written experts-first; a candidate
no reading fits is an ordinary block, left as it is). A built-in
adapter that matched a layer by name but cannot convert it (an own class that happens to share
the name) leaves it to that second step; a user's adapter that fails is an error.
"""

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from dyconv_deploy.convert.detect import ROOT, UnknownDynamicConv, scan_convolutions
from dyconv_deploy.convert.registry import (ADAPTER_DOCS, Adapter, builtin_adapters, installed_adapters,
                                            load_adapter)
from dyconv_deploy.convert.traced import FAMILY as TRACED, NotRecognised, recognise_traced
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.model_spec import forward_errors_named
from dyconv_deploy.nn import DynamicConvBase, DyReLU
from dyconv_deploy.tolerance import TOLERANCES, Tolerance, compare

log = logging.getLogger(__name__)

# Layers that are already canonical: never matched, never descended into.
_CANONICAL = (DynamicConvBase, DyReLU)


@dataclass(frozen=True)
class ConvertedModule:
    """One replacement: module path, adapter family, number of experts K, max abs error of the check."""

    path: str
    family: str
    num_kernels: Optional[int]
    max_error: float


@dataclass
class ConversionReport:
    """What :func:`convert_model` replaced, and the dynamic convs it could not convert."""

    converted: list[ConvertedModule] = field(default_factory=list)
    unknown: list[UnknownDynamicConv] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the whole model, e.g. ``converted 51 osvai_odconv layers, max error 7.5e-09``."""
        if self.unknown:
            noun = "conv" if len(self.unknown) == 1 else "convs"
            return f"{len(self.unknown)} dynamic {noun} not converted: {', '.join(u.path for u in self.unknown)}"
        if not self.converted:
            return "already canonical (no foreign dynamic convs)"
        counts = Counter(r.family for r in self.converted)
        families = " + ".join(f"{count} {family}" for family, count in counts.items())
        noun = "layer" if len(self.converted) == 1 else "layers"
        return f"converted {families} {noun}, max error {max(r.max_error for r in self.converted):.2g}"

    def unknown_message(self) -> str:
        """One line naming every unconverted dynamic conv and how to add an adapter ("" when none)."""
        if not self.unknown:
            return ""
        names = ", ".join(f"{u.path} ({u.module_type}{': ' + u.reason if u.reason else ''})" for u in self.unknown)
        if any(u.module_type == "GraphModule" for u in self.unknown):
            return (f"convolution weight depends on the input in {names}: a traced or torch.export program keeps no "
                    "layer structure for the adapters to recognise; export from the nn.Module instead "
                    "(file.py:factory, or a state_dict with --arch)")
        return (f"convolution weight depends on the input in {names}; no adapter recognises this layer: "
                f"write one and pass it with --adapter FILE.py:ClassName (see {ADAPTER_DOCS})")

    def raise_for_unknown(self) -> None:
        """Raise :class:`DyconvError` naming every unconverted dynamic conv (exporters would fail on them)."""
        if self.unknown:
            raise DyconvError(self.unknown_message())

    def __str__(self) -> str:
        lines = [f"{r.path}: {r.family} K={r.num_kernels} max_error={r.max_error:.3g}" for r in self.converted]
        lines += [f"{u.path}: UNKNOWN dynamic conv in {u.module_type} (weight depends on the input)"
                  for u in self.unknown]
        return "\n".join(lines) or "no dynamic layers to convert"


def convert_model(model: nn.Module, example_input, *, adapters: Optional[Sequence[Adapter | str]] = None,
                  tolerance: Tolerance = TOLERANCES["fp32"]) -> tuple[nn.Module, ConversionReport]:
    """Return a converted copy of ``model`` (eval mode) and the report; ``model`` is not modified.

    Args:
        example_input: a tensor ``[N, C, H, W]`` or a tuple of forward arguments.
        adapters: extra adapters, or ``"file.py:ClassName"`` specs (``--adapter``), tried before the
            installed (entry point) and built-in ones.
        tolerance: each canonical layer must match its original within this on random inputs.
    Raises:
        DyconvError: a canonical layer disagrees with the module it replaces (names the module).
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    extra = [load_adapter(a) if isinstance(a, str) else a for a in adapters or ()]
    builtin = list(builtin_adapters())
    converted = copy.deepcopy(model).eval()
    matches = list(_match(converted, [*extra, *installed_adapters(), *builtin]))
    report = ConversionReport()
    reasons = {}  # path -> why a layer was not converted (a built-in adapter matched its name but failed, ...)
    if matches:
        with forward_errors_named(converted, inputs):  # the first forward: a bad input shape fails here
            recorded = _record_inputs(converted, [m[2] for m in matches], inputs)
    for path, parent, module, adapter in matches:
        path = path or ROOT
        if module not in recorded:
            log.debug("convert: %s (%s) is not reached by the example input; left as is", path, adapter.family)
            continue
        try:
            canonical = adapter.to_canonical(module, parent)
        except DyconvError as exc:  # an attribute the contract cannot express: say which module has it
            raise DyconvError(f"convert: {path}: {exc}") from exc
        except Exception as exc:
            if adapter not in builtin:
                raise
            reasons[path] = f"the {adapter.family} adapter matched its name but failed: {type(exc).__name__}: {exc}"
            continue
        try:
            converted = _put(converted, path, adapter.family, module, canonical, recorded[module], tolerance, report)
        except DyconvError as exc:
            if adapter not in builtin:
                raise
            reasons[path] = f"the {adapter.family} adapter matched its name but: {exc}"
    with forward_errors_named(converted, inputs):  # without matches, the first forward
        scan = scan_convolutions(converted, inputs)
    modules = {path or ROOT: module for path, module in converted.named_modules()}
    mixtures = {path: modules[path] for path in scan.mixtures if not _in_canonical(converted, path)}
    unknown = scan.dynamic
    if unknown:
        layers = {u.path: modules[u.path] for u in unknown if u.module_type != "GraphModule"}
        converted, failures = _convert_traced(converted, layers, inputs, tolerance, report)
        for path, failure in failures.items():
            reasons[path] = _joined(reasons.get(path), failure)
        done = {r.path for r in report.converted}
        unknown = [u for u in unknown if u.path not in done]  # a canonical layer runs the contract op, no conv
    present = {path or ROOT: module for path, module in converted.named_modules()}
    mixtures = {path: module for path, module in mixtures.items() if present.get(path) is module}
    if mixtures:  # candidates: most are ordinary blocks, which no reading fits
        converted, failures = _convert_traced(converted, mixtures, inputs, tolerance, report)
        for path, failure in failures.items():
            log.debug("convert: %s mixes no expert convs: %s", path, failure)
    report.unknown = [replace(u, reason=reasons.get(u.path, "")) for u in unknown]
    return converted, report


def _in_canonical(model: nn.Module, path: str) -> bool:
    """Whether the module at ``path`` is, or is inside, a canonical layer (its router's own convs)."""
    if path == ROOT:
        return isinstance(model, _CANONICAL)
    parts = path.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), _CANONICAL) for i in range(len(parts) + 1))


def _put(model: nn.Module, path: str, family: str, original: nn.Module, canonical: nn.Module, spec,
         tolerance: Tolerance, report: ConversionReport) -> nn.Module:
    """Check ``canonical`` against ``original`` (the module at ``path``), put it in its place and report it;
    returns the model (``canonical`` itself when ``path`` is the root)."""
    for layer in _dynamic_layers(canonical):  # the layer, or the one in a traced block
        layer.source = family  # inspect shows it beside the layer's own family (its math)
    error = _check(path, family, original, canonical, spec, tolerance)
    if path == ROOT:
        model = canonical
    else:
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, canonical)
    row = ConvertedModule(path, family, _num_kernels(canonical), error)
    log.debug("convert: %s -> %s (K=%s, max error %.3g)", path, type(canonical).__name__, row.num_kernels, error)
    report.converted.append(row)
    return model


def _convert_traced(model: nn.Module, layers: dict, inputs: tuple, tolerance: Tolerance,
                    report: ConversionReport) -> tuple[nn.Module, dict]:
    """Convert what :mod:`~dyconv_deploy.convert.traced` recognises of the ``layers`` (path -> module) and return
    the model and, for the others, why not (path -> reason)."""
    recorded = _record_inputs(model, list(layers.values()), inputs)
    failures = {}
    for path, module in layers.items():
        if module not in recorded:
            continue
        args, kwargs = recorded[module]
        if kwargs or not args or not all(isinstance(a, _TensorSpec) and a.shape[:1] == args[0].shape[:1]
                                         for a in args):
            failures[path] = ("its forward takes other arguments than tensors of the batch (x and, say, its "
                              "parent's routing weights)")
            continue
        try:
            canonical = recognise_traced(module, *(torch.zeros(a.shape, dtype=a.dtype, device=a.device) for a in args))
            model = _put(model, path, TRACED, module, canonical, recorded[module], tolerance, report)
        except (NotRecognised, DyconvError) as exc:
            failures[path] = f"not recognised from its trace: {exc}"
    return model, failures


def _joined(first: Optional[str], second: str) -> str:
    return f"{first}; {second}" if first else second


def _match(model: nn.Module, adapters: Sequence[Adapter]):
    """Yield ``(path, parent, module, adapter)`` top-down (the root has path ``""`` and parent None).

    Matched modules and canonical layers are not descended into.
    """
    def visit(module: nn.Module, parent: Optional[nn.Module], path: str):
        if isinstance(module, _CANONICAL):
            return
        adapter = next((a for a in adapters if a.matches(module, parent)), None)
        if adapter is not None:
            yield path, parent, module, adapter
            return
        for name, child in module.named_children():
            yield from visit(child, module, f"{path}.{name}" if path else name)
    yield from visit(model, None, "")


@dataclass(frozen=True)
class _TensorSpec:
    """A recorded tensor argument: replaced by a random tensor like it in the check."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _record_inputs(model: nn.Module, modules: list[nn.Module], inputs: tuple) -> dict:
    """The first ``(args, kwargs)`` each module receives in ``model(*inputs)``, tensors as :class:`_TensorSpec`."""
    recorded = {}

    def hook(module, args, kwargs):
        recorded.setdefault(module, tree_map(lambda t: _TensorSpec(t.shape, t.dtype, t.device)
                                             if isinstance(t, Tensor) else t, (args, kwargs)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _check(path: str, family: str, original: nn.Module, canonical: nn.Module, spec, tolerance: Tolerance) -> float:
    """Max abs error of ``canonical`` against ``original`` on random inputs shaped as ``spec``."""
    generator = torch.Generator().manual_seed(0)
    args, kwargs = tree_map(lambda s: torch.randn(s.shape, generator=generator).to(s.device, s.dtype)
                            if isinstance(s, _TensorSpec) else s, spec)
    with torch.no_grad():
        expected = original(*args, **kwargs)
        try:
            actual = canonical(*args, **kwargs)
            comparison = compare(actual, expected, tolerance, name=path)
        except Exception as exc:  # the adapter built a layer that cannot stand in for the original
            raise DyconvError(f"convert: the {family} layer built for {path} ({type(original).__name__}) fails on "
                              f"the original's input: {type(exc).__name__}: {exc}") from exc
    if not comparison.passed:
        raise DyconvError(f"convert: {path} ({type(original).__name__}, family {family}) does not match its "
                          f"canonical layer: {comparison}")
    return comparison.max_abs


def _dynamic_layers(module: nn.Module) -> list[DynamicConvBase]:
    return [m for m in module.modules() if isinstance(m, DynamicConvBase)]


def _num_kernels(module: nn.Module) -> Optional[int]:
    """K: experts of a dynamic conv (the one in a traced block), linear pieces of a DyReLU."""
    layers = _dynamic_layers(module)
    return layers[0].num_kernels if layers else getattr(module, "k", None)
