"""``dyconv-deploy build-plugin`` and ``dyconv_deploy.trt.plugin``: errors, help, loading a built library.

The compile itself runs once per CI run in ``plugins/ci_compile.sh`` (into ``plugins/build``);
here the missing-tool paths are simulated and a library already built is opened.
"""

import ctypes.util
import os
import shutil
import stat
import subprocess

import pytest

from dyconv_deploy.cli.main import main
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.trt import plugin


@pytest.fixture
def fake_nvcc(tmp_path, monkeypatch):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 0\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CUDACXX", str(nvcc))
    return nvcc


def test_help_names_the_requirements(capsys):
    assert main(["build-plugin", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "TENSORRT_ROOT" in text and "--cuda-arch" in text and "getCreators" in text


def test_missing_nvcc_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    for name in ("CUDACXX", "CUDA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    real_access = os.access
    monkeypatch.setattr(plugin.os, "access", lambda p, mode: "nvcc" not in str(p) and real_access(p, mode))
    monkeypatch.setattr(plugin.shutil, "which", lambda name: "/usr/bin/cmake" if name == "cmake" else None)
    assert main(["build-plugin", "-o", str(tmp_path / "build")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nvcc not found") and len(err.strip().splitlines()) == 1


def test_missing_tensorrt_headers_lists_the_paths_searched(monkeypatch, tmp_path, fake_nvcc, capsys):
    monkeypatch.setattr(plugin.shutil, "which", lambda name: "/usr/bin/cmake")
    monkeypatch.setattr(plugin, "tensorrt_header_candidates", lambda root=None: [tmp_path / "nowhere" / "include"])
    assert main(["build-plugin", "-o", str(tmp_path / "build")]) == 2
    err = capsys.readouterr().err
    assert "TensorRT headers (NvInferRuntime.h) not found" in err and str(tmp_path / "nowhere") in err


def test_missing_cmake(monkeypatch, tmp_path, fake_nvcc):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferRuntime.h").write_text("")
    monkeypatch.setattr(plugin.shutil, "which", lambda name: None)
    with pytest.raises(DyconvError, match="cmake not found"):
        plugin.build_plugin(tmp_path / "build", tensorrt_root=tmp_path)


def test_tensorrt_root_is_searched_first(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferRuntime.h").write_text("")
    assert plugin.find_tensorrt_headers(tmp_path) == tmp_path / "include"


def test_locate_lists_the_paths_searched(tmp_path):
    with pytest.raises(DyconvError, match=f"searched: {tmp_path / plugin.LIBRARY_NAME}.*build-plugin"):
        plugin.locate_plugin_library([tmp_path])


def test_a_library_without_the_entry_points_is_refused():
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for a foreign shared library")
    path = next((p for p in (f"/lib/x86_64-linux-gnu/{libm}", f"/usr/lib/x86_64-linux-gnu/{libm}", f"/lib64/{libm}")
                 if os.path.isfile(p)), None)
    if path is None:
        pytest.skip(f"{libm} not found in the usual folders")
    with pytest.raises(DyconvError, match="does not export getCreators"):
        plugin.open_plugin_library(path)


def test_built_library_opens_with_one_creator():
    try:
        library = plugin.locate_plugin_library()
    except DyconvError as exc:
        pytest.skip(f"plugin library not built ({exc})")
    plugin.open_plugin_library(library)


def test_an_explicit_tensorrt_root_without_headers_is_not_replaced_by_another(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORRT_ROOT", str(tmp_path))  # would have the headers
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferRuntime.h").write_text("")
    with pytest.raises(DyconvError, match=f"searched: {tmp_path / 'other' / 'include'},"):
        plugin.find_tensorrt_headers(tmp_path / "other")
    assert plugin.find_tensorrt_headers() == tmp_path / "include"


@pytest.mark.parametrize("header, major", [
    ("#define TRT_MAJOR_ENTERPRISE 11\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.\n",
     "11"),
    ("#define NV_TENSORRT_MAJOR 10 //!< TensorRT major version.\n#define NV_TENSORRT_MINOR 3\n", "10"),
], ids=["10.11+", "before-10.11"])
def test_cmake_reads_the_major_version_of_either_header_style(tmp_path, header, major):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not on PATH (pip install cmake)")
    (tmp_path / "NvInferVersion.h").write_text(header)
    script = plugin.plugins_dir() / "tensorrt" / "TensorRTVersion.cmake"
    done = subprocess.run(["cmake", f"-DTENSORRT_INCLUDE_DIR={tmp_path}", "-P", str(script)], capture_output=True,
                          text=True)
    assert (done.returncode, done.stderr.strip()) == (0, major), done.stderr
