"""Checkpoint specs: ``.pt2`` programs, state_dicts with ``--arch``, pickles only with ``--trust-pickle``."""

import pytest
import torch

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io import load_model

ARCH = """
import torch
from dyconv_deploy.nn import CondConv2d, ODConv2d

def build():
    return torch.nn.Sequential(CondConv2d(3, 4, 3, padding=1), torch.nn.ReLU(), ODConv2d(4, 4, 1))

def build_wider():
    return torch.nn.Sequential(CondConv2d(3, 8, 3, padding=1), torch.nn.ReLU(), ODConv2d(8, 4, 1))
"""
X = torch.randn(2, 3, 6, 6)


@pytest.fixture
def arch(tmp_path):
    (tmp_path / "net.py").write_text(ARCH)
    return f"{tmp_path / 'net.py'}:build"


@pytest.fixture
def model(arch):
    torch.manual_seed(1)
    return load_model(arch)


def assert_same_function(loaded, model):
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_state_dict_loads_into_the_architecture(tmp_path, arch, model):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert_same_function(load_model(str(tmp_path / "weights.pt"), arch=arch), model)


def test_training_checkpoint_wrapper_and_data_parallel_prefixes_are_unwrapped(tmp_path, arch, model):
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "last.ckpt")
    assert_same_function(load_model(str(tmp_path / "last.ckpt"), arch=arch), model)


def test_state_dict_without_arch_asks_for_it(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(DyconvError, match="is a state_dict: pass --arch"):
        load_model(str(tmp_path / "weights.pth"))


def test_mismatched_checkpoint_names_the_first_mismatched_keys(tmp_path, arch, model):
    state = model.state_dict()
    state.pop("0.routing_fn.weight")
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(DyconvError, match=r"missing \(1\): 0\.routing_fn\.weight; unexpected \(1\): head\.weight"):
        load_model(str(tmp_path / "bad.pt"), arch=arch)
    with pytest.raises(DyconvError, match=r"shape mismatch, checkpoint vs model \(\d+\): 0\.weight \(4, 4, 3, 3, 3\) "
                                          r"vs \(4, 8, 3, 3, 3\)"):
        load_model(str(tmp_path / "bad.pt"), arch=arch.replace(":build", ":build_wider"))


@pytest.mark.parametrize("save", [torch.save, lambda m, f: torch.jit.save(torch.jit.trace(m, X), f)],
                         ids=["pickled-module", "torchscript"])
def test_code_carrying_checkpoints_need_trust_pickle(tmp_path, model, save):
    path = tmp_path / "model.pt"
    save(model, path)
    with pytest.raises(DyconvError, match="runs code stored in the file.*--trust-pickle") as info:
        load_model(str(path))
    assert "\n" not in str(info.value)
    assert_same_function(load_model(str(path), trust_pickle=True), model)


def test_exported_program_loads_without_trust(tmp_path, model):
    program = torch.export.export(model, (X,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_model(str(tmp_path / "model.pt2"))
    assert_same_function(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(X[:1]), model(X[:1]))


def test_arch_only_applies_to_state_dicts(arch):
    with pytest.raises(DyconvError, match="--arch applies to state_dict checkpoints"):
        load_model(arch, arch=arch)


def test_missing_checkpoint_is_a_user_error():
    with pytest.raises(DyconvError, match="checkpoint not found"):
        load_model("no/such/weights.pt")


def test_trusted_pickle_whose_classes_cannot_be_imported_says_how_to_fix_it(tmp_path, monkeypatch):
    (tmp_path / "private_net.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import private_net

    torch.save(private_net.Net(2, 2), tmp_path / "whole.pt")
    monkeypatch.delitem(__import__("sys").modules, "private_net")
    (tmp_path / "private_net.py").rename(tmp_path / "moved.py")
    with pytest.raises(DyconvError, match="cannot import .*make the code that defined the model importable"):
        load_model(str(tmp_path / "whole.pt"), trust_pickle=True)
