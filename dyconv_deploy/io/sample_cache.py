"""Bundled samples (``sample:NAME``) with their calibrated weights cached on disk.

Calibrating a sample's BatchNorms runs the whole network on a batch of 16 images (DY-MobileNetV2:
~7 CPU s, ODConv-MobileNetV2: ~11), which every command naming a sample would pay again. The
weights are deterministic, so the first command saves them to
``<cache>/samples/<name>-<key>.pt`` (atomically; ``key``: the torch and dyconv-deploy versions and
a hash of the code that decides them, :func:`dyconv_deploy.samples.sample_sources`) and later ones
load them with ``torch.load(weights_only=True)``, which never runs code from the file. A file
that does not load, or whose tensors do not fit the network, is recomputed and replaced; a cache
that cannot be written costs only the time.
"""

import hashlib
import logging
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dyconv_deploy import __version__
from dyconv_deploy.cache import default_cache_dir
from dyconv_deploy.io.artifacts import atomic_path

log = logging.getLogger(__name__)


def load_sample(name: str, cache_dir: Optional[str | Path] = None) -> nn.Module:
    """Sample ``name`` in eval mode, the same module as ``create_sample(name)``, its weights from the cache
    in ``cache_dir`` (default :func:`~dyconv_deploy.cache.default_cache_dir`) when they are there."""
    from dyconv_deploy.samples import create_sample, get_sample, sample_state_dict

    get_sample(name)  # an unknown name fails here, naming the closest, before any file is touched
    path = sample_weights_path(name, cache_dir)
    state = _read(path)
    if state is not None:
        try:
            return create_sample(name, state)
        except (RuntimeError, ValueError) as exc:  # keys or shapes that do not fit: recompute
            log.debug("cached weights %s do not fit sample %s (%s); recomputing", path, name, exc)
    state = sample_state_dict(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            torch.save(state, temp)
    except OSError as exc:
        log.debug("cannot cache the weights of sample %s in %s: %s", name, path, exc)
    return create_sample(name, state)


def sample_weights_path(name: str, cache_dir: Optional[str | Path] = None) -> Path:
    """Where :func:`load_sample` keeps the weights of sample ``name``."""
    return Path(cache_dir or default_cache_dir()) / "samples" / f"{name}-{_key(name)}.pt"


def _key(name: str) -> str:
    return hashlib.sha256(f"{name}\0{torch.__version__}\0{__version__}\0{_sources_sha256()}".encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _sources_sha256() -> str:
    from dyconv_deploy.samples import sample_sources

    digest = hashlib.sha256()
    for path in sample_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read(path: Path) -> Optional[dict[str, torch.Tensor]]:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or something weights_only refuses to unpickle
        log.debug("cannot load cached sample weights %s (%s); recomputing", path, exc)
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return state
