"""The adapter registry: which foreign dynamic-conv families ``convert`` recognises.

An adapter declares a ``family`` (its name: the code it recognises, e.g. ``osvai_odconv``; the
registry key, and what ``inspect`` shows as a converted layer's *source*, beside the canonical
layer's own ``family``, its math: ``dynamic_conv``, ``condconv``, ``odconv``, ``dynet``) and
implements ``matches(module, parent)`` and ``to_canonical(module, parent) -> nn.Module``; it
receives the parent because some routing lives in the enclosing block (timm's CondConv).
Built-in adapters are registered with :func:`register` by the modules named in
:data:`BUILTIN_MODULES`, imported in that order by :func:`builtin_adapters` (the one explicit list). Third-party adapters come from the entry-point
group ``dyconv_deploy.adapters`` or from ``--adapter file.py:ClassName`` (:func:`load_adapter`).
"""

import difflib
import importlib
import inspect
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.user_code import load_python_file

ENTRY_POINT_GROUP = "dyconv_deploy.adapters"
ADAPTER_DOCS = "README.md#bring-your-own-model"

# Built-in families, in matching order: one module per family.
BUILTIN_MODULES = (
    "dyconv_deploy.convert.timm_condconv",
    "dyconv_deploy.convert.odconv",
    "dyconv_deploy.convert.folded_attention",
    "dyconv_deploy.convert.per_sample_loop",
    "dyconv_deploy.convert.dynet",
    "dyconv_deploy.convert.dyrelu",
)


class Adapter:
    """Base class of adapters: recognise one family of foreign layers and build its canonical layer."""

    family: str = ""

    def matches(self, module: nn.Module, parent: Optional[nn.Module]) -> bool:
        """True when ``module`` (a child of ``parent``; None for the model itself) belongs to this family."""
        raise NotImplementedError

    def to_canonical(self, module: nn.Module, parent: Optional[nn.Module]) -> nn.Module:
        """A module computing the same function as ``module`` from the same parameters."""
        raise NotImplementedError


class Registry:
    """Adapters in matching order; a family appears at most once."""

    def __init__(self):
        self._adapters: dict[str, Adapter] = {}

    def add(self, adapter: Adapter) -> Adapter:
        if not adapter.family:
            raise DyconvError(f"adapter {type(adapter).__name__} declares no 'family'")
        if adapter.family in self._adapters:
            raise DyconvError(f"adapter family {adapter.family!r} is registered twice "
                              f"({type(self._adapters[adapter.family]).__name__} and {type(adapter).__name__})")
        self._adapters[adapter.family] = adapter
        return adapter

    def register(self, cls: type) -> type:
        """Class decorator: register one instance of ``cls``."""
        self.add(cls())
        return cls

    def families(self) -> list[str]:
        return list(self._adapters)

    def __iter__(self):
        return iter(self._adapters.values())


BUILTIN = Registry()
register = BUILTIN.register


def builtin_adapters() -> Registry:
    """The built-in registry, populated on first use from :data:`BUILTIN_MODULES`."""
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
    return BUILTIN


def installed_adapters() -> list[Adapter]:
    """Adapters advertised by installed packages under the ``dyconv_deploy.adapters`` entry-point group."""
    return [_instantiate(ep.load(), f"entry point {ep.name!r}") for ep in entry_points(group=ENTRY_POINT_GROUP)]


def load_adapter(spec: str) -> Adapter:
    """``"path/to/file.py:ClassName"`` -> an adapter instance (the ``--adapter`` option)."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise DyconvError(f"--adapter {spec!r}: expected FILE.py:ClassName")
    path = Path(path_text)
    if not path.is_file():
        raise DyconvError(f"--adapter {spec!r}: no such file {path}")
    module = load_python_file(path, "adapter")
    if not hasattr(module, name):
        candidates = [n for n, obj in vars(module).items()
                      if inspect.isclass(obj) and issubclass(obj, Adapter) and obj is not Adapter]
        close = difflib.get_close_matches(name, candidates, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DyconvError(f"--adapter {spec!r}: {path} defines no {name!r}; {hint}"
                          f"adapter classes there: {', '.join(candidates) or 'none'}")
    return _instantiate(getattr(module, name), f"--adapter {spec!r}")


def _instantiate(obj, origin: str) -> Adapter:
    adapter = obj() if inspect.isclass(obj) else obj
    for attribute in ("family", "matches", "to_canonical"):
        if not getattr(adapter, attribute, None):
            raise DyconvError(f"{origin}: {type(adapter).__name__} is not an adapter (no {attribute!r}); "
                              f"see {ADAPTER_DOCS}")
    return adapter
