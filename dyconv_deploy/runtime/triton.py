"""A Triton Inference Server model repository for an ONNX model or a TensorRT engine.

Layout written by :func:`write_triton_repo` (``MOUNT`` is where the server sees the repo,
``/models`` in NVIDIA's container examples)::

    REPO/NAME/config.pbtxt          backend, max_batch_size, I/O without the batch dim, dynamic_batching
    REPO/NAME/1/model.onnx          (onnxruntime backend)  or  REPO/NAME/1/model.plan  (tensorrt)
    REPO/NAME/<plugin>.so           optional: ORT custom-op library or TensorRT plugin library
    REPO/NAME/README.md             how to start the server with that library loaded

The model folder ``REPO/NAME`` appears whole (:func:`dyconv_deploy.io.artifacts.atomic_folder`):
it is built under a hidden temp name beside it and renamed into place, so a failed or interrupted
run leaves an existing one untouched; other models in ``REPO`` are not touched.

Dynamic batching needs a dynamic leading dimension on every input (``plugin`` and
``experts`` graphs; a ``grouped`` graph has a static batch and is refused). For the
onnxruntime backend, ``dyconv::DynamicConv2d`` nodes are expanded into standard ops
(:func:`dyconv_deploy.runtime.ort_custom_op.to_onnxruntime`) unless a custom-op library is given.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.io.artifacts import atomic_folder, atomic_write_bytes, save_onnx
from dyconv_deploy.io.onnx_file import read_onnx
from dyconv_deploy.runtime import ENGINE_SUFFIXES
from dyconv_deploy.runtime.base import TensorSpec, onnx_io_specs
from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime
from dyconv_deploy.trt.sidecar import read_sidecar

TRITON_BACKENDS = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
_ModelWriter = Callable[[Path], object]  # writes the served model to the given path


@dataclass(frozen=True)
class TritonModel:
    """Everything ``config.pbtxt`` says about one model."""

    name: str
    backend: str
    max_batch: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    op_library: str | None = None  # ORT custom-op library path as the server sees it


def config_pbtxt(model: TritonModel) -> str:
    """The model configuration in protobuf text format (dims exclude the batch dimension)."""
    lines = [f'name: "{model.name}"', f'backend: "{model.backend}"', f"max_batch_size: {model.max_batch}"]
    for field, specs in (("input", model.inputs), ("output", model.outputs)):
        lines.append(f"{field} [")
        lines.append(",\n".join(_tensor_block(spec, batched=model.max_batch > 0) for spec in specs))
        lines.append("]")
    if model.max_batch > 0:
        lines.append("dynamic_batching {")
        if model.preferred_batch:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, model.preferred_batch))} ]")
        lines.append(f"  max_queue_delay_microseconds: {model.max_queue_delay_us}")
        lines.append("}")
    if model.op_library:
        lines.append(f'model_operations {{ op_library_filename: "{model.op_library}" }}')
    return "\n".join(lines) + "\n"


def _tensor_block(spec: TensorSpec, *, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    shown = ", ".join(str(d) if isinstance(d, int) and d >= 0 else "-1" for d in dims)
    data_type = _TRITON_TYPES.get(np.dtype(spec.dtype).name)
    if data_type is None:
        raise DyconvError(f"tensor {spec.name} has dtype {np.dtype(spec.dtype).name}, which Triton does not map")
    return f'  {{\n    name: "{spec.name}"\n    data_type: {data_type}\n    dims: [ {shown} ]\n  }}'


def write_triton_repo(model_file: str | os.PathLike, repo_dir: str | os.PathLike, *, name: str = "dyconv_model",
                      backend: str = "onnxruntime", max_batch: int = 32, preferred_batch: tuple[int, ...] = (8, 16),
                      plugin_library: str | os.PathLike | None = None, mount_path: str = "/models") -> Path:
    """Write ``repo_dir/name/`` (config, version 1 model, optional library, README); returns that folder.

    Args:
        model_file: ``.onnx`` for ``onnxruntime``, a ``.engine``/``.plan`` with its sidecar for ``tensorrt``.
        backend: ``onnxruntime`` or ``tensorrt``.
        max_batch: Triton's ``max_batch_size`` (0 disables batching; then shapes are used as they are).
        preferred_batch: dynamic batcher's preferred sizes (each <= ``max_batch``).
        plugin_library: ORT custom-op library (onnxruntime) or TensorRT plugin library (tensorrt).
        mount_path: the repository's path inside the server (written into config and README).
    """
    model_file = Path(model_file)
    if backend not in TRITON_BACKENDS:
        raise DyconvError(f"unknown Triton backend {backend!r}; valid: {', '.join(TRITON_BACKENDS)}")
    if not model_file.is_file():
        raise DyconvError(f"model file not found: {model_file}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise DyconvError(f"model name {name!r} must use letters, digits, '_' and '-' only")
    if any(b < 1 or b > max_batch for b in preferred_batch):
        raise DyconvError(f"--preferred-batch sizes must lie in 1..{max_batch} (--max-batch), got {preferred_batch}")
    plugin = Path(plugin_library) if plugin_library is not None else None
    if plugin is not None and not plugin.is_file():
        raise DyconvError(f"plugin library not found: {plugin}")
    write_model, inputs, outputs = (_onnx_model(model_file, plugin) if backend == "onnxruntime"
                                    else _engine_model(model_file, max_batch))
    if max_batch > 0:
        _check_batch_dims(inputs + outputs)
    served_plugin = f"{mount_path.rstrip('/')}/{name}/{plugin.name}" if plugin else None
    config = TritonModel(name, backend, max_batch, inputs, outputs, tuple(preferred_batch) if max_batch else (),
                         op_library=served_plugin if backend == "onnxruntime" else None)

    model_dir = Path(repo_dir) / name
    engine_plugin = _engine_plugin(model_file) if backend == "tensorrt" else None
    with atomic_folder(model_dir) as staging:
        write_model(staging / "1" / TRITON_BACKENDS[backend])
        if plugin is not None:
            atomic_write_bytes(staging / plugin.name, plugin.read_bytes())
        atomic_write_bytes(staging / "config.pbtxt", config_pbtxt(config).encode())
        atomic_write_bytes(staging / "README.md",
                           _readme(config, Path(repo_dir), mount_path, served_plugin, engine_plugin).encode())
    return model_dir


def _onnx_model(path: Path, plugin: Path | None) -> tuple[_ModelWriter, list[TensorSpec], list[TensorSpec]]:
    """The writer of the model to serve (with external data over 2 GiB) and the I/O; without ``plugin``,
    contract nodes are expanded into standard ops."""
    if path.suffix != ".onnx":
        raise DyconvError(f"the onnxruntime backend serves an .onnx file, got {path.name}")
    model = read_onnx(path)
    if plugin is None and contract_nodes(model):
        model = to_onnxruntime(model)
    return lambda target: save_onnx(model, target), *onnx_io_specs(model)


def _engine_model(path: Path, max_batch: int) -> tuple[_ModelWriter, list[TensorSpec], list[TensorSpec]]:
    if path.suffix not in ENGINE_SUFFIXES:
        raise DyconvError(f"the tensorrt backend serves an engine ({', '.join(ENGINE_SUFFIXES)}); build one from "
                          f"{path.name} with `dyconv-deploy build-engine` first")
    sidecar = read_sidecar(path)
    if sidecar is None or "inputs" not in sidecar:
        raise DyconvError(f"{path.name} has no sidecar with its I/O ({path.name}.json); rebuild it with "
                          "`dyconv-deploy build-engine`")
    engine_max = min(r["max"][0] for profile in sidecar["profiles"] for r in profile.values())
    if max_batch > engine_max:
        raise DyconvError(f"--max-batch {max_batch} exceeds the engine's profile maximum {engine_max}; rebuild with "
                          f"--max-batch {max_batch} or serve a smaller batch")

    def specs(records):
        return [TensorSpec(r["name"], tuple(None if d < 0 else d for d in r["shape"]), np.dtype(r["dtype"]))
                for r in records]

    return lambda target: atomic_write_bytes(target, path.read_bytes()), specs(sidecar["inputs"]), \
        specs(sidecar["outputs"])


def _engine_plugin(path: Path) -> str | None:
    """How the engine gets the DynamicConv2d plugin: "embedded" (in the plan), "file" (loaded at run time) or None."""
    sidecar = read_sidecar(path) or {}
    if sidecar.get("plugin_serialized"):
        return "embedded"
    return "file" if sidecar.get("plugin_sha256") else None


def _check_batch_dims(specs: list[TensorSpec]) -> None:
    static = [str(s) for s in specs if s.shape and isinstance(s.shape[0], int)]
    if static:
        raise DyconvError(f"dynamic batching needs a dynamic batch dimension but {', '.join(static)} "
                          "have a fixed one; export with a dynamic batch (plugin/experts strategy) or use --max-batch 0")


def _readme(model: TritonModel, repo: Path, mount: str, served_plugin: str | None, engine_plugin: str | None) -> str:
    run = (f"docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -v {repo.resolve()}:{mount} "
           f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\\n  tritonserver --model-repository={mount}")
    sections = [f"# {model.name} (Triton {model.backend} backend)\n",
                f"Generated by `dyconv-deploy triton-repo`; dynamic batching up to {model.max_batch}.\n"]
    if model.backend == "tensorrt":
        sections.append(
            "Use a Triton release whose TensorRT version equals the engine's (see the engine's `.json` sidecar), on "
            "the GPU model it was built for.\n")
        if engine_plugin == "embedded":
            sections.append(
                "The plan carries the DynamicConv2d plugin library (`build-engine --embed-plugin`: a "
                "version-compatible engine), that is host code, which Triton's TensorRT backend deserialises only "
                "with `version-compatible=true`:\n")
            run += " \\\n  --backend-config=tensorrt,version-compatible=true"
        elif engine_plugin == "file":
            sections.append(
                "**This engine cannot be served as it is**: it needs the DynamicConv2d plugin library registered "
                "at load time, and Triton's `plugins=` option and `LD_PRELOAD` only dlopen a library, which "
                "registers nothing for a library that exports `getCreators` (as ours does). Rebuild it with "
                "`dyconv-deploy build-engine --embed-plugin` (the plan then carries the library) and serve that.\n")
        if served_plugin:
            sections.append(f"The library is copied here ({served_plugin}) for reference only.\n")
    elif served_plugin:
        sections.append("config.pbtxt names the ONNX Runtime custom-op library for `dyconv::DynamicConv2d` in "
                        f"`model_operations.op_library_filename` ({served_plugin}); the server loads it with the "
                        "model.\n")
    sections.append(f"```bash\n{run}\n```\n")
    sections.append(f"Check it: `curl localhost:8000/v2/models/{model.name}/config`.\n")
    return "\n".join(sections)
