"""The graphs a benchmark runs, exported once and cached on disk by content hash.

A graph's key hashes the model's weights (``state_dict_sha256``), the strategy, the fixed
batch (``grouped`` only; the others keep the batch dynamic), the input shape, the opset and
the package version, so a changed model or a new release never reuses a stale file (an
editable checkout whose passes changed without a version bump should clear the cache).
TensorRT engines built from these graphs are rebuilt when their sidecar does not match the
installed TensorRT, GPU or plugin. The cache lives in ``$DYCONV_DEPLOY_CACHE`` or
``~/.cache/dyconv-deploy`` unless a folder is given.

The static twin: for ``sample:NAME`` it is the bundled ``sample:NAME_static`` (same
architecture, ``nn.Conv2d``, no attention branches); for any other model it is the ``static``
strategy graph of the model itself (mean expert kernels, attention removed).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import onnx
import torch
from torch import nn

from dyconv_deploy import __version__
from dyconv_deploy.cache import CACHE_ENV, default_cache_dir  # noqa: F401 - re-exported for bench users

TWIN = "static twin"


def twin_spec(spec: str) -> Optional[str]:
    """``sample:NAME_static`` when ``spec`` is a sample with a bundled twin, else None."""
    if not spec.startswith("sample:"):
        return None
    from dyconv_deploy.samples import list_samples

    twin = f"{spec[len('sample:'):]}_static"
    return f"sample:{twin}" if twin in list_samples() else None


@dataclass
class GraphSet:
    """Exports a model once, then lowers and caches one ONNX file per (strategy, fixed batch).

    Args:
        model: the dynamic model (canonical layers, eval mode); twin: its static twin or None.
        input_shape: ``[N, C, H, W]``; only C, H, W matter (the batch is set per graph).
    """

    model: nn.Module
    twin: Optional[nn.Module]
    input_shape: tuple[int, ...]
    cache_dir: Path
    opset: int

    def path(self, strategy: str, batch: int) -> Path:
        """The cached graph of ``strategy`` (``TWIN`` for the static twin) that runs at ``batch``."""
        from dyconv_deploy.lower import lower

        fixed = batch if strategy == "grouped" else None
        if strategy == TWIN and self.twin is not None:
            return self._cached(self.twin, "twin", None, lambda: self._export(self.twin))
        lowering = "static" if strategy == TWIN else strategy
        return self._cached(self.model, lowering, fixed,
                            lambda: lower(self.raw(), lowering, static_batch=fixed))

    def per_layer_path(self, choices: dict[str, str]) -> Path:
        """The cached ``auto`` graph: each layer lowered with ``choices[layer]`` (dynamic batch; no ``grouped``)."""
        from dyconv_deploy.lower.per_layer import lower_per_layer

        return self._cached(self.model, "auto", None, lambda: lower_per_layer(self.raw(), choices),
                            choices=choices)

    def raw(self) -> onnx.ModelProto:
        """The exported graph before lowering (contract nodes, dynamic batch)."""
        return onnx.load(str(self._cached(self.model, "raw", None, lambda: self._export(self.model))))

    def _export(self, model: nn.Module) -> onnx.ModelProto:
        from dyconv_deploy.export import export_onnx

        example = torch.randn(1, *self.input_shape[1:], generator=torch.Generator().manual_seed(0))
        return export_onnx(model, example, opset=self.opset)

    def _cached(self, model: nn.Module, label: str, batch: Optional[int],
                build: Callable[[], onnx.ModelProto], **extra) -> Path:
        from dyconv_deploy.export.metadata import save_atomic, state_dict_sha256

        fields = {"weights": state_dict_sha256(model), "graph": label, "batch": batch,
                  "shape": list(self.input_shape[1:]), "opset": self.opset, "version": __version__, **extra}
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
        path = self.cache_dir / f"{label}-{key}.onnx"
        if not path.is_file():
            save_atomic(build(), path)
        return path
