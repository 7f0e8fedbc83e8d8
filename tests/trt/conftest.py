"""``tensorrt_gpu``: the fixture of every test that builds or runs a real TensorRT engine."""

import importlib

import pytest
import torch

from dyconv_deploy.deps import available


@pytest.fixture(scope="session")
def tensorrt_gpu():
    """The ``tensorrt`` module on a machine with a CUDA device; skips saying which of the two is missing."""
    if not available("tensorrt"):
        pytest.skip("tensorrt not importable (pip install 'dyconv-deploy[trt]' on a machine with TensorRT)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (TensorRT engines build and run on a GPU)")
    return importlib.import_module("tensorrt")
