"""The one runtime interface: ``load()``, ``run(inputs) -> outputs`` and I/O specs.

Every backend (PyTorch eager, ONNX Runtime, TensorRT) takes and returns numpy arrays keyed
by tensor name, so ``verify`` and ``bench`` treat them alike. A runtime is a context
manager: ``with load_runtime(path, "ort-cpu") as rt: rt.run({...})``. A runtime loads on first
use: :meth:`run`, ``with``, :meth:`load`, or reading ``input_specs`` / ``output_specs``.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import onnx

from dyconv_deploy.errors import DyconvError

# A dimension is an int, or None / a symbolic name (str) when it varies (e.g. the batch).
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` or a name for a dynamic dimension) and numpy dtype of one I/O tensor."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def __str__(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}]:{np.dtype(self.dtype).name}"


class Runtime(ABC):
    """A loaded model that maps named numpy inputs to named numpy outputs.

    Subclasses set ``backend`` and implement :meth:`_load` (fills the specs; :meth:`load`
    calls it once) and :meth:`_run`; :meth:`run` checks input names first.
    """

    backend: str = ""

    def __init__(self) -> None:
        self._input_specs: list[TensorSpec] = []
        self._output_specs: list[TensorSpec] = []
        self._loaded = False

    @property
    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs, in order (loads the runtime on first access)."""
        self.load()
        return self._input_specs

    @input_specs.setter
    def input_specs(self, specs: list[TensorSpec]) -> None:
        self._input_specs = list(specs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        """The model's outputs, in order (loads the runtime on first access)."""
        self.load()
        return self._output_specs

    @output_specs.setter
    def output_specs(self, specs: list[TensorSpec]) -> None:
        self._output_specs = list(specs)

    @abstractmethod
    def _load(self) -> None:
        """Create the session/engine and fill ``input_specs`` and ``output_specs``."""

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference on inputs whose names were checked."""

    def load(self) -> "Runtime":
        """Load once; later calls do nothing. Returns ``self`` for chaining."""
        if not self._loaded:
            self._loaded = True  # _load may read the specs it fills
            try:
                self._load()
            except BaseException:
                self._loaded = False
                raise
        return self

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{input name: array}`` -> ``{output name: array}`` (loads on first use)."""
        self.load()
        expected = {spec.name for spec in self.input_specs}
        if set(inputs) != expected:
            raise DyconvError(f"{self.backend} expects inputs {sorted(expected)} but got {sorted(inputs)}")
        return self._run(inputs)

    def close(self) -> None:
        """Release sessions and device memory (the runtime can be loaded again)."""
        self._loaded = False

    def __enter__(self) -> "Runtime":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()


def onnx_io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs as :class:`TensorSpec` lists."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_value_info_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_value_info_spec(v) for v in model.graph.output]


def _value_info_spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)))
