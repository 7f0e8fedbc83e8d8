"""PyTorch eager as a runtime: the reference every exported artefact is compared with.

The model takes its inputs positionally in ``input_names`` order and returns a tensor or a
tuple of tensors named by ``output_names``. With ``use_extension`` the dynamic convs run on
the project's CUDA kernels (``dyconv_deploy.ops.cuda``, built from ``plugins/torch``).
"""

import numpy as np
import torch
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime.base import Runtime, TensorSpec


class TorchRuntime(Runtime):
    """Run an ``nn.Module`` on CPU or CUDA under ``torch.inference_mode``.

    Args:
        model: the module (put in eval mode on load).
        device: ``"cpu"`` or ``"cuda"``.
        use_extension: route ``dyconv::dynamic_conv2d`` to the CUDA extension kernels.
        input_names, output_names: I/O names, matching the exported ONNX graph.
        input_shapes: per-input shapes for ``input_specs`` (``None`` dims are dynamic).
    """

    backend = "torch"

    def __init__(self, model: nn.Module, *, device: str = "cpu", use_extension: bool = False,
                 input_names: tuple[str, ...] = ("input",), output_names: tuple[str, ...] = ("output",),
                 input_shapes: dict[str, tuple] | None = None) -> None:
        super().__init__()
        self.model, self.device, self.use_extension = model, torch.device(device), use_extension
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)
        self.input_shapes = input_shapes or {}

    def _load(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DyconvError("the torch backend was asked for CUDA but PyTorch sees no CUDA device (a CPU build "
                              "of torch, or no GPU); run it on the CPU")
        if self.use_extension:
            _enable_extension()
        self.model = self.model.eval().to(self.device)
        self.input_specs = [TensorSpec(name, tuple(self.input_shapes.get(name, ())), np.dtype(np.float32))
                            for name in self.input_names]
        self.output_specs = [TensorSpec(name, (), np.dtype(np.float32)) for name in self.output_names]

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device) for name in self.input_names]
        with torch.inference_mode():
            result = self.model(*args)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        if len(outputs) != len(self.output_names):
            raise DyconvError(f"the model returned {len(outputs)} outputs but {len(self.output_names)} names were "
                              f"given ({', '.join(self.output_names)})")
        return {name: out.detach().cpu().numpy() for name, out in zip(self.output_names, outputs)}


def _enable_extension() -> None:
    try:
        from dyconv_deploy.ops.cuda import enable_cuda_kernels
    except ImportError as exc:
        raise DyconvError("the torch CUDA extension is not available (dyconv_deploy.ops.cuda cannot be imported: "
                          f"{exc}); build it from plugins/torch or pass use_extension=False") from exc
    enable_cuda_kernels()
