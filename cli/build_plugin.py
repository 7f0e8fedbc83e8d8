"""``dyconv-deploy build-plugin``: build the DynamicConv2d TensorRT plugin or the OpenVINO extension."""

from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_BUILD_DIRS = {"tensorrt": "plugins/build", "openvino": "plugins/build-openvino"}


def build_plugin_command(
    target: Annotated[str, typer.Option(help="tensorrt: libdyconv_trt_plugin.so (CUDA + IPluginV3); openvino: "
                                             "libdyconv_openvino.so (CPU, from the openvino wheel's headers).")]
    = "tensorrt",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="CMake build folder [default: plugins/build, or plugins/build-openvino].",
        show_default=False)] = None,
    tensorrt_root: Annotated[str, typer.Option(
        "--tensorrt-root", envvar="TENSORRT_ROOT",
        help="TensorRT tree with include/NvInferRuntime.h, of the runtime's major version (10.x or 11.x). "
             "Empty: search the tensorrt pip package, /usr/local/tensorrt, /usr and third_party/tensorrt.")] = "",
    cuda_arch: Annotated[str, typer.Option("--cuda-arch", help="CUDA architectures, CMake syntax "
                                                               "(80 = A100, 90 = H100).")] = "80;90",
) -> None:
    r"""Build libdyconv_trt_plugin.so (CUDA kernels + IPluginV3) with CMake and nvcc, or the OpenVINO extension.

    tensorrt needs cmake, the CUDA toolkit (nvcc from CUDA_HOME or PATH) and the TensorRT headers.
    The library links cudart only, not libnvinfer, and must export getCreators and setLoggerFinder (checked).
    Pass the printed path to build-engine --plugin.

    openvino needs cmake, a C++17 compiler and the openvino package (its wheel ships the headers). The
    openvino backend builds and caches it on first use; point DYCONV_OPENVINO_EXTENSION at a library built
    here to use that one instead.

    Examples:

        dyconv-deploy build-plugin

        TENSORRT_ROOT=/opt/TensorRT-10.16 dyconv-deploy build-plugin -o build/trt10 --cuda-arch 90

        dyconv-deploy build-plugin --target openvino
    """
    from dyconv_deploy.errors import DyconvError

    if target not in DEFAULT_BUILD_DIRS:
        raise DyconvError(f"unknown --target {target!r}; choose one of: {', '.join(DEFAULT_BUILD_DIRS)}")
    output = output or Path(DEFAULT_BUILD_DIRS[target])
    if target == "openvino":
        from dyconv_deploy.runtime.openvino_extension import build_extension

        library = build_extension(output)
    else:
        from dyconv_deploy.trt.plugin import build_plugin

        library = build_plugin(output, tensorrt_root or None, cuda_arch)
    typer.echo(f"built {library}")
