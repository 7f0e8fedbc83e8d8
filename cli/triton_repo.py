"""``dyconv-deploy triton-repo``: a Triton Inference Server model repository for an ONNX model or an engine."""

from pathlib import Path
from typing import Annotated, Optional

import typer


def triton_repo_command(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL_FILE", show_default=False,
                                               help="An .onnx file, or a .engine/.plan with its .json sidecar.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model repository folder.")] = Path("model_repository"),
    name: Annotated[str, typer.Option("--name", help="Model name in the repository.")] = "dyconv_model",
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, tensorrt, or auto (tensorrt for "
                                                           ".engine/.plan files, else onnxruntime).")] = "auto",
    max_batch: Annotated[int, typer.Option("--max-batch", help="max_batch_size (0: no batching).")] = 32,
    preferred_batch: Annotated[str, typer.Option("--preferred-batch", help="Dynamic batcher's preferred sizes, "
                                                                           "comma-separated.")] = "8,16",
    plugin: Annotated[Optional[Path], typer.Option(
        "--plugin", show_default=False,
        help="Library copied into the model folder: the ONNX Runtime custom-op library (onnxruntime) or the "
             "TensorRT plugin (tensorrt).")] = None,
    mount_path: Annotated[str, typer.Option("--mount-path", help="Where the server sees the repository.")]
    = "/models",
) -> None:
    """Write a Triton model repository: config.pbtxt with dynamic batching, the model as version 1, a README.

    Examples:

        dyconv-deploy triton-repo model.experts.onnx -o repo --name dy_mobilenetv2 --max-batch 32

        dyconv-deploy triton-repo model.engine -o repo --preferred-batch 8,16,32
    """
    from dyconv_deploy.errors import DyconvError
    from dyconv_deploy.runtime import is_engine
    from dyconv_deploy.runtime.triton import write_triton_repo

    try:
        sizes = tuple(int(s) for s in preferred_batch.split(",") if s.strip())
    except ValueError as exc:
        raise DyconvError(f"--preferred-batch {preferred_batch!r}: expected integers like 8,16") from exc
    if backend == "auto":
        backend = "tensorrt" if is_engine(model_file) else "onnxruntime"
    model_dir = write_triton_repo(model_file, output, name=name, backend=backend, max_batch=max_batch,
                                  preferred_batch=sizes, plugin_library=plugin, mount_path=mount_path)
    typer.echo(f"wrote {model_dir}/config.pbtxt, {model_dir}/1/ and {model_dir}/README.md")
