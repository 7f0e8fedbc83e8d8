"""The TensorRT runtime's calls against the recording ``tensorrt`` stand-in (``fake_trt``, conftest.py)."""

import pytest

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime.tensorrt_runtime import deserialize_engine, set_input_shapes


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


def test_input_shapes_inside_the_profile_are_set(fake_trt):
    trt = fake_trt()  # profile of x: 1x3x4x4 .. 32x3x4x4
    engine = trt.Runtime(None).deserialize_cuda_engine(b"plan")
    set_input_shapes(engine, engine.create_execution_context(), {"x": (32, 3, 4, 4)})
    assert trt.events[-1] == ("set_input_shape", "x", (32, 3, 4, 4))


@pytest.mark.parametrize("shape", [(33, 3, 4, 4), (2, 3, 5, 4), (2, 3, 4)], ids=["batch", "height", "rank"])
def test_an_input_outside_the_profile_is_named_with_the_range(fake_trt, shape):
    engine = fake_trt().Runtime(None).deserialize_cuda_engine(b"plan")
    shown = "x".join(map(str, shape))
    with pytest.raises(DyconvError, match=rf"^input x has shape {shown}, outside the profile of m.engine "
                                          r"\(min 1x3x4x4, opt 8x3x4x4, max 32x3x4x4\); "):
        set_input_shapes(engine, engine.create_execution_context(), {"x": shape}, "m.engine")


@pytest.mark.parametrize("shape", [(33, 3, 4, 4), (2, 3, 5, 4), (2, 3, 3, 4)], ids=["batch", "height", "smaller"])
def test_the_rebuild_hint_is_a_build_engine_command_whose_profile_covers_the_shape(fake_trt, shape):
    import shlex

    import typer

    from dyconv_deploy.cli.main import app
    from dyconv_deploy.trt.build import parse_shapes

    engine = fake_trt().Runtime(None).deserialize_cuda_engine(b"plan")
    with pytest.raises(DyconvError) as raised:
        set_input_shapes(engine, engine.create_execution_context(), {"x": shape}, "m.engine")
    command = shlex.split(str(raised.value).split("`")[1])
    assert command[:2] == ["dyconv-deploy", "build-engine"]
    build = typer.main.get_command(app).commands["build-engine"]
    profile = parse_shapes(build.make_context("build-engine", command[2:]).params["shapes"])["x"]
    covered = [all(a <= d <= b for a, d, b in zip(profile.min, dims, profile.max))
               for dims in (shape, (1, 3, 4, 4), (32, 3, 4, 4))]  # the shape and the old profile's min and max
    assert covered == [True] * 3 and profile.opt == (8, 3, 4, 4)


def test_an_input_of_another_rank_is_told_the_engine_rank(fake_trt):
    engine = fake_trt().Runtime(None).deserialize_cuda_engine(b"plan")
    with pytest.raises(DyconvError, match=r"; the engine takes x with 4 dimensions$"):
        set_input_shapes(engine, engine.create_execution_context(), {"x": (2, 3, 4)}, "m.engine")
