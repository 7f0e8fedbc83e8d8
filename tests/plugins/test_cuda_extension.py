"""The on-demand torch extension (``dyconv_deploy.ops.cuda``): sources and CPU-side errors."""

import re

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


GOOD = {"x": torch.zeros(2, 4, 5, 5), "attention": torch.ones(2, 3), "weight": torch.ones(3, 6, 2, 3, 3),
        "bias": torch.ones(3, 6), "spatial": torch.ones(2, 3, 3)}


@pytest.mark.parametrize("operand, shape, message", [
    ("attention", (2, 4), r"attention has shape \[2, 4\], expected \[2, 3\] or \[2, 3, 6\]"),
    ("attention", (1, 3), r"attention has shape \[1, 3\]"),
    ("attention", (2, 3, 5), r"attention has shape \[2, 3, 5\]"),
    ("bias", (3, 5), r"bias has shape \[3, 5\], expected \[3, 6\]"),
    ("spatial", (2, 3, 1), r"spatial has shape \[2, 3, 1\], expected \[2, 3, 3\]"),
    ("spatial", (1, 3, 3), r"spatial has shape \[1, 3, 3\]"),
    ("weight", (3, 6, 3, 3, 3), r"does not fit x \[2, 4, 5, 5\]"),
    ("weight", (3, 5, 2, 3, 3), r"and M divisible by groups"),  # M = 5 outputs cannot split into 2 groups
    ("bias", (6,), r"bias has shape \[6\], expected \[3, 6\]"),  # one bias per expert, not one mixed bias
    ("x", (2, 4, 5), r"x must be \[N, C, H, W\]"),
])
def test_operand_shapes_are_checked_before_the_kernels_read_them(operand, shape, message):
    # The kernels index every operand from x's and weight's sizes: a short tensor would be read out of bounds.
    operands = {**GOOD, operand: torch.zeros(shape)}
    with pytest.raises(DyconvError, match=message):
        cuda.dynamic_conv2d_cuda(**operands, groups=2)


def test_contract_shapes_pass_the_operand_check():
    cuda.check_operands(**GOOD, groups=2)
    cuda.check_operands(**{**GOOD, "attention": torch.ones(2, 3, 6), "bias": None, "spatial": None}, groups=2)


def fake_cublas(root, library="libcublas.so.13"):
    (root / "include").mkdir(parents=True)
    (root / "include" / "cublas_v2.h").write_text("")
    (root / "lib").mkdir()
    (root / "lib" / library).write_text("")
    return root


def test_cublas_root_comes_first_and_compiles_the_cublas_path(monkeypatch, tmp_path):
    root = fake_cublas(tmp_path / "wheel")
    toolkit = fake_cublas(tmp_path / "toolkit", "libcublas.so")
    monkeypatch.setenv("CUBLAS_ROOT", str(root))
    assert cuda.cublas_root(str(toolkit)) == root
    flags = cuda.cublas_flags(root)
    assert flags["extra_cuda_cflags"] == ["-DDYCONV_WITH_CUBLAS=1", f"-I{root / 'include'}"]
    assert "-l:libcublas.so.13" in flags["extra_ldflags"] and f"-Wl,-rpath,{root / 'lib'}" in flags["extra_ldflags"]
    monkeypatch.delenv("CUBLAS_ROOT")
    assert cuda.cublas_root(str(toolkit)) == toolkit


def test_without_cublas_the_extension_builds_without_its_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CUBLAS_ROOT", str(tmp_path))
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cublas_v2.h").write_text("")  # headers but no library: not usable either
    monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: None)
    assert cuda.cublas_root(None) is None
    assert cuda.cublas_flags(None) == {"extra_cuda_cflags": [], "extra_ldflags": []}


def test_algos_are_numbered_as_the_kernels_number_them():
    """``ALGOS.index(name)`` is the ``dyconv::Algo`` value handed to the extension (and how plugin tactics are named):
    it must match the enum of ``plugins/kernels/dynamic_conv.h`` and the names of ``algo_name``."""
    kernels = cuda.plugins_dir() / "kernels"
    values = dict(re.findall(r"^\s*(k\w+) = (\d+),", (kernels / "dynamic_conv.h").read_text(), re.M))
    names = dict(re.findall(r'case Algo::(k\w+): return "([\w-]+)";', (kernels / "dynamic_conv.cu").read_text()))
    assert set(names) <= set(values) and len(names) == len(cuda.ALGOS)
    assert {name: int(values[enum]) for enum, name in names.items()} == {a: i for i, a in enumerate(cuda.ALGOS)}


def test_the_extension_gets_the_paths_enum_value_and_operands_in_xs_type(monkeypatch):
    """What :func:`dynamic_conv2d_cuda` hands the extension: every operand cast to ``x.dtype`` and the path's
    ``dyconv::Algo`` value (``auto`` 0, ``depthwise`` 1, ..., ``tensor-core-experts`` 7)."""
    calls = []
    extension = type("FakeExtension", (), {"dynamic_conv2d": staticmethod(lambda *args: calls.append(args))})
    monkeypatch.setitem(cuda._state, "extension", extension)
    operands = {**GOOD, "attention": GOOD["attention"].double(), "weight": GOOD["weight"].half()}
    for algo, value in (("auto", 0), ("depthwise", 1), ("cublas-pointwise", 4), ("tensor-core-experts", 7)):
        cuda.dynamic_conv2d_cuda(**operands, groups=2, algo=algo)
        assert calls[-1][-1] == value, algo
    x, attention, weight, bias, spatial = calls[-1][:5]
    assert {t.dtype for t in (attention, weight, bias, spatial)} == {torch.float32}
    assert calls[-1][5:9] == ([1, 1], [0, 0, 0, 0], [1, 1], 2)
