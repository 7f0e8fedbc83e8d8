"""The wheel carries the native sources: built from a copy of the tree, installed (not editable) into a folder,
it finds ``plugins/`` as its own package data through :func:`dyconv_deploy.native.plugins_dir`.

One wheel build and one ``pip install --target`` (about 10 s); no network (no build isolation, no deps).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ("pyproject.toml", "README.md", "dyconv_deploy", "cli", "samples", "plugins")
SOURCES = ("CMakeLists.txt", "kernels/dynamic_conv.cu", "kernels/dynamic_conv.h", "tensorrt/CMakeLists.txt",
           "tensorrt/TensorRTVersion.cmake", "tensorrt/dynamicConvPlugin.cpp", "tensorrt/dynamicConvPlugin.map",
           "torch/dyconv_torch.cpp", "openvino/CMakeLists.txt", "openvino/extension.cpp")
PROBE = """
import json
import dyconv_deploy
from dyconv_deploy.native import plugins_dir
from dyconv_deploy.trt.plugin import default_build_dir
print(json.dumps({"package": dyconv_deploy.__file__, "sources": str(plugins_dir()), "build": str(default_build_dir())}))
"""


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def test_an_installed_wheel_finds_its_native_sources(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in TREE:  # a copy, so the build leaves nothing in the checkout
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("build", "build-*", "__pycache__"))
        else:
            shutil.copy2(path, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("dyconv_deploy-*.whl")
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))

    environment = {k: v for k, v in os.environ.items() if k != "DYCONV_PLUGINS_DIR"}
    environment.update(PYTHONPATH=str(site), DYCONV_DEPLOY_CACHE=str(tmp_path / "cache"))
    probe = subprocess.run([sys.executable, "-c", PROBE], env=environment, cwd=tmp_path, capture_output=True,
                           text=True)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    sources = Path(found["sources"])
    assert Path(found["package"]).is_relative_to(site) and sources == site / "dyconv_deploy" / "native_sources"
    assert [name for name in SOURCES if not (sources / name).is_file()] == []
    assert not any(sources.glob("build*"))  # build trees of the checkout stay out of the wheel
    assert Path(found["build"]) == tmp_path / "cache" / "tensorrt-plugin"  # never inside the installed package
