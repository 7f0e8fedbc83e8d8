"""Resolve a MODEL spec to an ``nn.Module`` in eval mode.

Specs:
    ``sample:NAME``           a bundled sample (``sample:NAME_static`` for its static twin; weights cached,
                              :mod:`dyconv_deploy.io.sample_cache`)
    ``path/to/file.py:fn``    call ``fn()`` defined in a Python file
    ``pkg.module:fn``         call ``fn()`` from an importable module
    ``model.pt2``, ``weights.pt|.pth|.ckpt``  a checkpoint (:mod:`dyconv_deploy.io.checkpoint`)
"""

import importlib
import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

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
        from dyconv_deploy.io.sample_cache import load_sample

        model = load_sample(spec[len("sample:"):])
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
        inspect.signature(factory).bind()
    except TypeError as exc:
        raise DyconvError(f"{spec}: the factory must be callable without arguments ({exc})") from exc
    except ValueError:  # no signature to inspect (a builtin): calling it tells
        pass
    try:
        return factory()
    except Exception as exc:
        raise DyconvError(f"the factory {spec} raised {type(exc).__name__}: {_first_line(exc)}") from exc


@contextmanager
def forward_errors_named(model: nn.Module, example_input: Tensor | tuple) -> Iterator[None]:
    """Inside the block, an exception from a forward of ``model`` (say, on an input of a shape it rejects)
    becomes a one-line :class:`DyconvError` naming the shape of ``example_input`` (a tensor or a tuple of
    forward arguments) and the innermost module of ``model`` that was running.

    Example: ``the model rejects input 1x5x32x32: features.0 (Conv2d) raised RuntimeError: Given groups=1,
    weight of size [8, 3, 3, 3], expected input[1, 5, 32, 32] to have 3 channels, but got 5 channels instead``.
    """
    paths = {id(module): path or "the model's own forward" for path, module in model.named_modules()}
    running: list[nn.Module] = []

    def enter(module, args):
        if id(module) in paths:
            running.append(module)

    def leave(module, args, output):
        if running and running[-1] is module:
            running.pop()

    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
    try:
        yield
    except DyconvError:
        raise
    except Exception as exc:
        where = f"{paths[id(running[-1])]} ({type(running[-1]).__name__})" if running else "the model"
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs if isinstance(t, Tensor))
        raise DyconvError(f"the model rejects input {shapes}: {where} raised "
                          f"{type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "(no message)"
