"""Resolve a MODEL spec to an ``nn.Module`` in eval mode.

Specs:
    ``sample:NAME``           a bundled sample (``sample:NAME_static`` for its static twin)
    ``path/to/file.py:fn``    call ``fn()`` defined in a Python file
    ``pkg.module:fn``         call ``fn()`` from an importable module
    ``model.pt2``, ``weights.pt|.pth|.ckpt``  a checkpoint (:mod:`dyconv_deploy.io.checkpoint`)
"""

import importlib
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.checkpoint import is_checkpoint, load_checkpoint
from dyconv_deploy.io.user_code import load_python_file, user_code_path

IMAGENET_SHAPE = (1, 3, 224, 224)


def load_model(spec: str, arch: Optional[str] = None, trust_pickle: bool = False) -> nn.Module:
    """Build the model that ``spec`` names and return it in eval mode.

    ``arch`` (a model spec such as ``file.py:factory`` or ``sample:NAME``) builds the network a
    state_dict checkpoint is loaded into; ``trust_pickle`` allows checkpoints that run code on
    load (pickled modules, TorchScript).
    """
    if is_checkpoint(spec):
        factory = None if arch is None else (lambda: load_model(arch))
        model = load_checkpoint(spec, factory, trust_pickle)
    elif arch is not None:
        raise DyconvError(f"--arch applies to state_dict checkpoints (.pt, .pth, .ckpt), not to {spec!r}")
    elif spec.startswith("sample:"):
        from dyconv_deploy.samples import create_sample

        model = create_sample(spec[len("sample:"):])
    else:
        location = spec.rpartition(":")[0]
        with user_code_path(*([Path(location).parent] if location.endswith(".py") else [])):
            model = _call_factory(resolve_factory(spec), spec)  # lazy imports in the factory find the user's code
    if not isinstance(model, nn.Module):
        raise DyconvError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The input shape MODEL ``spec`` is meant for: a sample's own, else ``1x3x224x224``."""
    if spec.startswith("sample:"):
        from dyconv_deploy.samples import default_input_shape as sample_shape

        return tuple(sample_shape(spec[len("sample:"):]))
    return IMAGENET_SHAPE


def resolve_factory(spec: str) -> Callable:
    """``file.py:fn`` or ``pkg.module:fn`` -> the callable (not called)."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise DyconvError(f"cannot read MODEL spec {spec!r}: expected sample:NAME, file.py:factory, "
                          "pkg.module:factory or a checkpoint file")
    module = load_python_file(location, "model") if location.endswith(".py") else _import(location, spec)
    factory = getattr(module, name, None)
    if not callable(factory):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise DyconvError(f"{location} has no callable {name!r}; callables there: {', '.join(public) or 'none'}")
    return factory


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)  # load_model put the current folder on the path
    except ImportError as exc:
        raise DyconvError(f"cannot import {module_name!r} for MODEL spec {spec!r}: {exc}") from exc


def _call_factory(factory: Callable, spec: str) -> nn.Module:
    try:
        return factory()
    except TypeError as exc:
        raise DyconvError(f"{spec}: the factory must be callable without arguments ({exc})") from exc
