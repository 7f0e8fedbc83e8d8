"""The on-demand torch extension (``dyconv_deploy.ops.cuda``): sources and CPU-side errors."""

import pytest
import torch

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.ops import cuda


def test_extension_sources_are_in_the_checkout():
    sources = cuda.extension_sources()
    assert [s.name for s in sources] == ["dynamic_conv.cu", "dyconv_torch.cpp"]
    assert all(s.is_file() for s in sources)


def test_enabling_without_a_device_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(cuda._state, "extension", None)
    with pytest.raises(DyconvError, match="no CUDA device"):
        cuda.enable_cuda_kernels()


def test_unknown_path_is_rejected_before_building():
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(DyconvError, match="unknown kernel path 'winograd'"):
        cuda.dynamic_conv2d_cuda(x, torch.ones(1, 1), torch.ones(1, 1, 1, 1, 1), algo="winograd")


def test_plugins_dir_override(monkeypatch, tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "dynamic_conv.cu").write_text("")
    monkeypatch.setenv("DYCONV_PLUGINS_DIR", str(tmp_path))
    assert cuda.plugins_dir() == tmp_path
