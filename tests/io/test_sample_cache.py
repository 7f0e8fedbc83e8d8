"""sample:NAME loads its calibrated weights from the cache: the same module, computed once, never unpickled code."""

import os
import pickle

import pytest
import torch

from dyconv_deploy import samples
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io import sample_cache
from dyconv_deploy.io.sample_cache import load_sample, sample_weights_path

NAME = "tiny_dynamic"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_first_load_caches_and_the_next_reads_the_same_weights(tmp_path, monkeypatch):
    expected = samples.create_sample(NAME)
    first = load_sample(NAME, tmp_path)
    path = sample_weights_path(NAME, tmp_path)
    assert path.is_file() and _same_weights(first, expected)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask() and list(path.parent.iterdir()) == [path]
    samples.sample_state_dict.cache_clear()
    monkeypatch.setattr(samples, "sample_state_dict", lambda name: pytest.fail("calibrated again"))
    second = load_sample(NAME, tmp_path)
    assert _same_weights(second, expected) and not second.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(second(x), expected(x))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-network", "code"])
def test_a_bad_cache_file_is_recomputed_and_replaced(tmp_path, damage):
    expected = samples.create_sample(NAME)
    path = sample_weights_path(NAME, tmp_path)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    if damage == "truncated":
        torch.save(expected.state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "other-network":
        torch.save(samples.create_sample(f"{NAME}_static").state_dict(), path)
    else:  # a pickle that runs code when unpickled without weights_only
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    model = load_sample(NAME, tmp_path)
    assert _same_weights(model, expected) and not marker.exists()
    assert _same_weights(samples.create_sample(NAME, torch.load(path, weights_only=True)), expected)  # replaced


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_the_key_follows_the_torch_version_and_the_code(tmp_path, monkeypatch):
    path = sample_weights_path(NAME, tmp_path)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert sample_weights_path(NAME, tmp_path) != path
    monkeypatch.undo()
    sample_cache._sources_sha256.cache_clear()
    monkeypatch.setattr(samples, "sample_sources", lambda: [])
    try:
        assert sample_weights_path(NAME, tmp_path) != path
    finally:
        sample_cache._sources_sha256.cache_clear()
    assert sample_weights_path(f"{NAME}_static", tmp_path) != path


def test_an_unwritable_cache_still_loads(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    assert _same_weights(load_sample(NAME, blocker), samples.create_sample(NAME))


def test_an_unknown_sample_touches_no_file(tmp_path):
    with pytest.raises(DyconvError, match="unknown sample"):
        load_sample("no_such_sample", tmp_path)
    assert not any(tmp_path.iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
