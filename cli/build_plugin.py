"""``dyconv-deploy build-plugin``: build the DynamicConv2d TensorRT plugin library."""

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_BUILD_DIR = "plugins/build"


def build_plugin_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="CMake build folder; the library is written "
                                                                "there as libdyconv_trt_plugin.so.")]
    = Path(DEFAULT_BUILD_DIR),
    tensorrt_root: Annotated[str, typer.Option(
        "--tensorrt-root", envvar="TENSORRT_ROOT",
        help="TensorRT tree with include/NvInferRuntime.h, of the runtime's major version (10.x or 11.x). "
             "Empty: search the tensorrt pip package, /usr/local/tensorrt, /usr and third_party/tensorrt.")] = "",
    cuda_arch: Annotated[str, typer.Option("--cuda-arch", help="CUDA architectures, CMake syntax "
                                                               "(80 = A100, 90 = H100).")] = "80;90",
) -> None:
    r"""Build libdyconv_trt_plugin.so (CUDA kernels + IPluginV3) with CMake and nvcc.

    Needs cmake, the CUDA toolkit (nvcc from CUDA_HOME or PATH) and the TensorRT headers.
    The library links cudart only, not libnvinfer, and must export getCreators and setLoggerFinder (checked).
    Pass the printed path to build-engine --plugin.

    Examples:

        dyconv-deploy build-plugin

        TENSORRT_ROOT=/opt/TensorRT-10.16 dyconv-deploy build-plugin -o build/trt10 --cuda-arch 90
    """
    from dyconv_deploy.trt.plugin import build_plugin

    library = build_plugin(output, tensorrt_root or None, cuda_arch)
    typer.echo(f"built {library}")
