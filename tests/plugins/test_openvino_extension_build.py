"""The OpenVINO extension's build cache (:mod:`dyconv_deploy.runtime.openvino_extension`), without a real build.

The real build runs once per session in ``tests/runtime/test_openvino.py`` (or in CI's ``build-plugin``
step); here ``build_extension`` is replaced by a stand-in that counts calls and writes a placeholder library,
except in the failed-build test, which runs CMake on an empty source folder (it fails at configure, in well
under a second).
"""

import shutil
from pathlib import Path

import pytest

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime import openvino_extension
from dyconv_deploy.runtime.openvino_extension import LIBRARY_ENV, LIBRARY_NAME, build_key, extension_library

pytest.importorskip("openvino", reason="needs the openvino wheel (pip install -e '.[test]')")


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """The folders ``build_extension`` was asked to build into (a placeholder library is written there)."""
    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    calls = []

    def build(output_dir, **kwargs):
        calls.append(Path(output_dir))
        library = Path(output_dir) / LIBRARY_NAME
        library.write_bytes(b"placeholder")
        return library

    monkeypatch.setattr(openvino_extension, "build_extension", build)
    return calls


@pytest.fixture
def sources(tmp_path, monkeypatch) -> Path:
    """A copy of ``plugins/openvino`` that the extension module builds and hashes instead."""
    copy = tmp_path / "sources"
    shutil.copytree(openvino_extension.extension_sources(), copy, ignore=shutil.ignore_patterns("build*"))
    monkeypatch.setattr(openvino_extension, "extension_sources", lambda: copy)
    return copy


def test_a_second_call_reuses_the_cached_build(tmp_path, builds):
    first = extension_library(cache_dir=tmp_path)
    assert first == tmp_path / f"openvino-extension-{build_key()}" / LIBRARY_NAME and first.is_file()
    assert extension_library(cache_dir=tmp_path) == first
    assert len(builds) == 1 and builds[0].parent == tmp_path and builds[0] != first.parent  # built aside, renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == [".openvino-extension.lock", first.parent.name]


def test_the_default_cache_honours_its_environment_variable(tmp_path, builds, monkeypatch):
    monkeypatch.setenv("DYCONV_DEPLOY_CACHE", str(tmp_path))
    assert extension_library().parent.parent == tmp_path
    assert extension_library().parent.parent == tmp_path and len(builds) == 1


def test_changed_sources_or_openvino_version_mean_a_new_build(tmp_path, sources, builds, monkeypatch):
    first = extension_library(cache_dir=tmp_path)
    (sources / "README.md").write_text("not a source")  # only .cpp, .hpp and CMakeLists.txt count
    assert extension_library(cache_dir=tmp_path) == first and len(builds) == 1
    with (sources / "mix_kernels.cpp").open("a") as stream:
        stream.write("\n// changed\n")
    second = extension_library(cache_dir=tmp_path)
    assert second != first and len(builds) == 2
    monkeypatch.setattr("openvino.__version__", "0.0.0-other")
    assert extension_library(cache_dir=tmp_path) not in (first, second) and len(builds) == 3


def test_a_failed_build_leaves_no_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    empty = tmp_path / "no-sources"
    empty.mkdir()
    monkeypatch.setattr(openvino_extension, "extension_sources", lambda: empty)
    cache = tmp_path / "cache"
    with pytest.raises(DyconvError, match=r"building the OpenVINO extension failed at `.*cmake -S \.\.\.`; see .*"
                                          r"build\.log"):
        extension_library(cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == [".openvino-extension.lock"]  # no scratch folder, no half build


def test_no_cmake_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DyconvError, match="cmake not found on PATH: .*pip install cmake"):
        openvino_extension.build_extension(tmp_path)


def test_the_environment_variable_wins_over_the_cache(tmp_path, builds, monkeypatch):
    library = tmp_path / "elsewhere.so"
    library.write_bytes(b"placeholder")
    monkeypatch.setenv(LIBRARY_ENV, str(library))
    assert extension_library(cache_dir=tmp_path / "cache") == library and builds == []
    assert not (tmp_path / "cache").exists()
