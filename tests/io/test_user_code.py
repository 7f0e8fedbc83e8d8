"""The user's code is found as ``python -m`` finds it, also from the console script (whose sys.path lacks cwd)."""

import subprocess
import sys
from pathlib import Path

import torch

from dyconv_deploy.io import load_model
from dyconv_deploy.io.user_code import user_code_path

NET = "import torch\nclass Net(torch.nn.Sequential):\n    def __init__(self):\n        super().__init__(torch.nn.Conv2d(3, 4, 3))\n"
FACTORY = "def build():\n    from mynet import Net  # imported when called, not when the file runs\n    return Net()\n"
CLI = str(Path(sys.executable).parent / "dyconv-deploy")


def _run(args, cwd):
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_package_module_spec_from_the_current_folder(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NET + "def build():\n    return Net()\n")
    process = _run(["inspect", "mypkg.models:build", "--input-shape", "1x3x8x8"], tmp_path)
    assert process.returncode == 0, process.stderr


def test_trusted_pickle_of_a_class_defined_beside_it(tmp_path):
    (tmp_path / "mynet.py").write_text(NET)
    subprocess.run([sys.executable, "-c", "import torch, mynet; torch.save(mynet.Net(), 'whole.pt')"], cwd=tmp_path,
                   check=True, timeout=120)
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    process = _run(["inspect", str(tmp_path / "whole.pt"), "--trust-pickle", "--input-shape", "1x3x8x8"], elsewhere)
    assert process.returncode == 0, process.stderr


def test_factory_that_imports_lazily_finds_the_files_beside_it(tmp_path):
    (tmp_path / "mynet.py").write_text(NET)
    (tmp_path / "factory.py").write_text(FACTORY)
    model = load_model(f"{tmp_path / 'factory.py'}:build")
    assert type(model).__name__ == "Net" and str(tmp_path) not in sys.path
    assert model(torch.randn(1, 3, 5, 5)).shape == (1, 4, 3, 3)


def test_the_search_path_is_restored(tmp_path):
    before = list(sys.path)
    with user_code_path(tmp_path):
        assert str(tmp_path.resolve()) in sys.path[:2]
    assert sys.path == before
