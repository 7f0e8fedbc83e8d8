"""The Triton README of a TensorRT engine says how the DynamicConv2d plugin gets into the server."""

import pytest

from dyconv_deploy.runtime.triton import write_triton_repo
from dyconv_deploy.trt.sidecar import write_sidecar

IO = {"profiles": [{"x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}}],
      "inputs": [{"name": "x", "shape": [-1, 3, 8, 8], "dtype": "float32"}],
      "outputs": [{"name": "y", "shape": [-1, 4, 8, 8], "dtype": "float32"}]}


@pytest.mark.parametrize("plugin, version_compatible, unservable", [
    ({"plugin_sha256": "ab" * 32, "plugin_serialized": True}, True, False),  # build-engine --embed-plugin
    ({"plugin_sha256": "ab" * 32, "plugin_serialized": False}, False, True),  # the library is loaded at run time
    ({"plugin_sha256": None, "plugin_serialized": False}, False, False),  # no DynamicConv2d layer (experts graph)
], ids=["embedded", "library-file", "no-plugin"])
def test_readme_follows_where_the_plugin_is(tmp_path, plugin, version_compatible, unservable):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {**IO, **plugin})
    readme = (write_triton_repo(engine, tmp_path / "repo", backend="tensorrt", max_batch=8,
                                preferred_batch=(4,)) / "README.md").read_text()
    assert ("--backend-config=tensorrt,version-compatible=true" in readme) == version_compatible
    assert ("cannot be served as it is" in readme and "--embed-plugin" in readme) == unservable
