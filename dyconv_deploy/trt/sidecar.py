"""The JSON sidecar written next to every engine, and the compatibility check made before loading it.

A TensorRT engine only runs with the TensorRT version and GPU architecture it was built
with, and with the same plugin library: loaded from its file at run time (hash-checked), or,
for engines built with ``--embed-plugin`` (version-compatible, ``plugin_serialized: true``),
serialised into the plan. ``model.engine`` gets ``model.engine.json``::

    {"format": 1, "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3",
     "compute_capability": "9.0", "plugin_sha256": "…" | null, "plugin_serialized": false,
     "profiles": [{"x": {"min": [1,3,224,224], "opt": [...], "max": [...]}}],
     "inputs": [{"name": "x", "shape": [-1,3,224,224], "dtype": "float32"}], "outputs": [...],
     "precision": "fp16", "onnx_sha256": "…", "build_seconds": 41.2, "built_at": "2026-…Z",
     "plugin_tactics": [{"layer": "/features.1/conv/DynamicConv2d", "tactic": 5,
                         "algo": "tensor-core-fused"}, ...] | null}

``plugin_tactics`` is what TensorRT's autotuner picked for each plugin layer (the plugin's tactics
are the ``dyconv::Algo`` values of ``plugins/kernels``; null when the plan could not be inspected).

:func:`check_compatible` compares it with :func:`current_environment` and raises a
:class:`~dyconv_deploy.errors.DyconvError` whose message is one sentence.
"""

import hashlib
import json
import os
from pathlib import Path

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.artifacts import atomic_write_bytes

SIDECAR_FORMAT = 1
_REBUILD = "rebuild it with `dyconv-deploy build-engine`"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(engine_path: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` (plus the format number) as the engine's sidecar; returns its path."""
    text = json.dumps({"format": SIDECAR_FORMAT, **record}, indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(sidecar_path(engine_path), text.encode())


def read_sidecar(engine_path: str | os.PathLike) -> dict | None:
    """The engine's sidecar as a dict, or ``None`` when there is none."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DyconvError(f"engine sidecar {path} is not valid JSON ({exc}); {_REBUILD}") from exc
    if record.get("format") != SIDECAR_FORMAT:
        raise DyconvError(f"engine sidecar {path} has format {record.get('format')!r}, expected "
                          f"{SIDECAR_FORMAT}; {_REBUILD}")
    return record


def current_environment(trt, plugin_library: str | os.PathLike | None = None) -> dict:
    """What :func:`check_compatible` compares against: TensorRT version, GPU, plugin hash.

    Args:
        trt: the imported ``tensorrt`` module.
        plugin_library: the plugin ``.so`` that will be loaded, if any.
    """
    import torch

    environment = {"tensorrt_version": trt.__version__, "gpu_name": None, "compute_capability": None,
                   "plugin_sha256": file_sha256(plugin_library) if plugin_library else None}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        environment.update(gpu_name=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}")
    return environment


def check_compatible(sidecar: dict, environment: dict, engine_name: str = "the engine") -> None:
    """Raise a one-sentence :class:`DyconvError` if the engine cannot run in ``environment``.

    Checks, in order: TensorRT version (exact: plans are not portable across releases),
    compute capability (plans hold kernels for one GPU architecture) and, when the plugin
    library was not serialised into the engine, the plugin library's sha256. A different
    GPU model of the same compute capability is allowed (TensorRT warns about it itself).
    """
    built, here = sidecar.get("tensorrt_version"), environment.get("tensorrt_version")
    if built != here:
        raise DyconvError(f"{engine_name} was built with TensorRT {built} but TensorRT {here} is installed, "
                          f"and engines only load in the version that built them; {_REBUILD} here.")
    built, here = sidecar.get("compute_capability"), environment.get("compute_capability")
    if here is None:
        raise DyconvError(f"{engine_name} needs a CUDA GPU (it was built for {sidecar.get('gpu_name')}, "
                          f"compute capability {built}) but PyTorch sees none.")
    if built != here:
        raise DyconvError(f"{engine_name} was built for compute capability {built} ({sidecar.get('gpu_name')}) "
                          f"but this GPU is {environment.get('gpu_name')} with compute capability {here}; "
                          f"{_REBUILD} on this GPU.")
    if sidecar.get("plugin_serialized") or not sidecar.get("plugin_sha256"):
        return
    built, here = sidecar["plugin_sha256"], environment.get("plugin_sha256")
    if here is None:
        raise DyconvError(f"{engine_name} uses the DynamicConv2d plugin library (sha256 {built[:12]}…) "
                          "but no plugin library is loaded; pass --plugin with the library it was built with.")
    if built != here:
        raise DyconvError(f"{engine_name} was built with plugin library sha256 {built[:12]}… but the loaded one "
                          f"is {here[:12]}…; pass --plugin with the original library or {_REBUILD}.")
