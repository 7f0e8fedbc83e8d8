"""Engine sidecars: round trip, and one-sentence explanations of every mismatch."""

import json

import pytest

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.trt.sidecar import check_compatible, file_sha256, read_sidecar, sidecar_path, write_sidecar

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
         "plugin_sha256": "ab" * 32, "plugin_serialized": False, "precision": "fp16"}


def _environment(**changes) -> dict:
    here = {k: BUILT[k] for k in ("tensorrt_version", "gpu_name", "compute_capability", "plugin_sha256")}
    return {**here, **changes}


def _message(sidecar: dict, environment: dict) -> str:
    with pytest.raises(DyconvError) as info:
        check_compatible(sidecar, environment, "model.engine")
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
    return message


def test_round_trip(tmp_path):
    engine = tmp_path / "model.engine"
    path = write_sidecar(engine, BUILT)
    assert path == sidecar_path(engine) == tmp_path / "model.engine.json"
    assert read_sidecar(engine) == {"format": 1, **BUILT}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_missing_sidecar_reads_as_none_and_bad_one_is_explained(tmp_path):
    assert read_sidecar(tmp_path / "model.engine") is None
    sidecar_path(tmp_path / "model.engine").write_text(json.dumps({"format": 99}))
    with pytest.raises(DyconvError, match="format 99"):
        read_sidecar(tmp_path / "model.engine")


def test_same_environment_passes_and_other_gpu_of_same_capability_too():
    check_compatible(BUILT, _environment())
    check_compatible(BUILT, _environment(gpu_name="NVIDIA H100 PCIe"))


@pytest.mark.parametrize("environment, expected", [
    (_environment(tensorrt_version="10.5.0"), "built with TensorRT 10.3.0 but TensorRT 10.5.0 is installed"),
    (_environment(compute_capability="8.0", gpu_name="NVIDIA A100"), "compute capability 9.0"),
    (_environment(compute_capability=None, gpu_name=None), "needs a CUDA GPU"),
    (_environment(plugin_sha256="cd" * 32), "plugin library sha256 abababababab"),
    (_environment(plugin_sha256=None), "no plugin library is loaded"),
], ids=["tensorrt", "gpu", "no-gpu", "plugin-hash", "plugin-missing"])
def test_mismatch_is_one_sentence(environment, expected):
    assert expected in _message(BUILT, environment)


def test_serialized_plugin_needs_no_library_here():
    check_compatible({**BUILT, "plugin_serialized": True}, _environment(plugin_sha256=None))


def test_file_sha256(tmp_path):
    (tmp_path / "lib.so").write_bytes(b"abc")
    assert file_sha256(tmp_path / "lib.so") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
