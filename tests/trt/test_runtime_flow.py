"""The TensorRT runtime's calls against the recording ``tensorrt`` stand-in (``fake_trt``, conftest.py)."""

from dyconv_deploy.runtime.tensorrt_runtime import deserialize_engine


def test_a_plan_without_the_plugin_loads_the_library_and_allows_no_host_code(fake_trt, tmp_path):
    trt = fake_trt()
    plan, plugin = tmp_path / "m.engine", tmp_path / "libdyconv_trt_plugin.so"
    plan.write_bytes(b"plan")
    plugin.write_bytes(b"\x7fELF plugin")
    deserialize_engine(trt, plan, plugin_library=plugin, host_code_allowed=False)
    assert [e for e in trt.events if e[0] != "logger"] == [("check", plugin.resolve()), ("load_library",
                                                           str(plugin.resolve())), ("deserialize", b"plan", False)]


def test_a_plan_that_carries_the_plugin_is_deserialised_with_host_code_allowed(fake_trt, tmp_path):
    trt = fake_trt()
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"plan")
    deserialize_engine(trt, plan, plugin_library=None, host_code_allowed=True)
    assert [e for e in trt.events if e[0] != "logger"] == [("deserialize", b"plan", True)]
