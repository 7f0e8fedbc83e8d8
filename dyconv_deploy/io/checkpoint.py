"""Load checkpoint files: ``.pt2`` programs, state_dicts with an architecture, trusted pickles.

- ``model.pt2``: a ``torch.export`` program (no code runs on load); its ``.module()``.
- ``weights.pt|.pth|.ckpt`` holding a state_dict (also under ``"state_dict"`` or ``"model"``,
  with DataParallel's ``module.`` prefixes): loaded with ``weights_only=True`` into
  ``arch()``; every key and shape must fit, else the first mismatches are named.
- a whole pickled module or a TorchScript archive runs code from the file when loaded, so
  it is refused unless ``trust_pickle=True``.
"""

import pickle
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.user_code import user_code_path

CHECKPOINT_SUFFIXES = (".pt2", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_SHOWN = 5  # mismatched keys named per kind


def is_checkpoint(spec: str) -> bool:
    """True when ``spec`` names a checkpoint file by its suffix."""
    return Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES


def load_checkpoint(path: str, arch: Optional[Callable[[], nn.Module]] = None,
                    trust_pickle: bool = False) -> nn.Module:
    """The module stored in (or described by) checkpoint ``path``, not yet in eval mode.

    Args:
        arch: builds the architecture a state_dict is loaded into (``--arch file.py:factory``).
        trust_pickle: allow whole pickled modules and TorchScript archives, which run code on load.
    """
    file = Path(path)
    if not file.is_file():
        raise DyconvError(f"checkpoint not found: {path}")
    if file.stat().st_size == 0:
        raise DyconvError(f"checkpoint {path} is empty (0 bytes): was it written completely?")
    if file.suffix.lower() == ".pt2":
        return _load_program(file)
    if _is_torchscript(file):
        _require_trust(file, trust_pickle, "is a TorchScript archive")
        with warnings.catch_warnings(), _unreadable(file):
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still loadable
            return torch.jit.load(str(file), map_location="cpu")
    try:
        with _unreadable(file, passing=(pickle.UnpicklingError,)), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the weights-only unpickler's notes on odd files
            content = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        _require_trust(file, trust_pickle, "holds a pickled object (not just tensors)")
        try:
            with user_code_path(file.parent), _unreadable(file, passing=(ModuleNotFoundError, AttributeError)):
                content = torch.load(file, map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc:  # the classes the pickle names are not importable
            raise DyconvError(f"{path} was pickled with classes this process cannot import ({exc}); make the code "
                              "that defined the model importable (PYTHONPATH, or run from its folder), or save "
                              "model.state_dict() and load it with --arch file.py:factory") from exc
    if isinstance(content, nn.Module):
        return content
    state_dict = _unwrap_state_dict(content, file)
    if arch is None:
        raise DyconvError(f"{path} is a state_dict: pass --arch file.py:factory (or pkg.module:factory) to "
                          "build the architecture it belongs to")
    model = arch()
    if not isinstance(model, nn.Module):
        raise DyconvError(f"--arch returned {type(model).__name__}, not a torch.nn.Module")
    load_state_dict_strict(model, state_dict, str(file))
    return model


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` after checking that keys and shapes match exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch, checkpoint vs model", mismatched)) if keys]
    if problems:
        raise DyconvError(f"{source} does not fit the architecture: {'; '.join(problems)}. Check that --arch "
                          "builds the network the checkpoint was saved from")
    model.load_state_dict(state_dict, strict=True)


class ProgramModule(nn.Module):
    """A loaded ``torch.export`` program of one input as a module.

    The program's train/eval behaviour was fixed when it was captured, so :meth:`train`
    (and ``eval()``) only set the flag instead of reaching into the program, which refuses them.
    """

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True) -> "ProgramModule":
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def _load_program(file: Path) -> nn.Module:
    from dyconv_deploy import ops  # noqa: F401  (deserialising the program needs torch.ops.dyconv)

    try:
        return ProgramModule(torch.export.load(str(file)))
    except Exception as exc:
        raise DyconvError(f"cannot load torch.export program {file}: {exc}") from exc


@contextmanager
def _unreadable(file: Path, passing: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Inside the block, a failure to read ``file`` (truncated, corrupt, not a ``torch.save`` file) is a
    one-line :class:`DyconvError`; the ``passing`` exceptions are raised unchanged."""
    try:
        yield
    except (DyconvError, *passing):
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DyconvError(f"cannot read checkpoint {file} (truncated, corrupt, or not written by torch.save / "
                          f"torch.jit.save?): {type(exc).__name__}: {reason}") from exc


def _is_torchscript(file: Path) -> bool:
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        return any(name.endswith("/constants.pkl") or name.split("/")[-2:-1] == ["code"]
                   for name in archive.namelist())


def _require_trust(file: Path, trust_pickle: bool, what: str) -> None:
    if not trust_pickle:
        raise DyconvError(f"{file} {what}; loading it runs code stored in the file, so it is refused by default. "
                          "If you trust its source, pass --trust-pickle; better, save model.state_dict() and "
                          "load it with --arch file.py:factory")


def _unwrap_state_dict(content, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, from the top level or a training-checkpoint wrapper."""
    if isinstance(content, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping) or not content:
        raise DyconvError(f"{file} holds {type(content).__name__}, not a state_dict or a module")
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DyconvError(f"{file} holds a dict without tensors (keys: {', '.join(map(str, list(content)[:_SHOWN]))})")
    if all(k.startswith("module.") for k in tensors):  # saved from nn.DataParallel / DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors
