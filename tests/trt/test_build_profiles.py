"""Optimisation profiles from --min/opt/max-batch and --shapes (pure functions, no TensorRT)."""

import pytest

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.trt.build import ShapeRange, parse_shapes, profile_shapes

BATCH = {"min_batch": 1, "opt_batch": 8, "max_batch": 32}


def test_parse_shapes_fixed_and_ranges():
    ranges = parse_shapes(["x:1x3x8x8,4x3x16x16,8x3x32x32", "ns:scope:tokens:2x5"])
    assert ranges["x"] == ShapeRange((1, 3, 8, 8), (4, 3, 16, 16), (8, 3, 32, 32))
    assert ranges["ns:scope:tokens"] == ShapeRange((2, 5), (2, 5), (2, 5))  # names may contain ':'


@pytest.mark.parametrize("spec", ["x", "x:", "x:1x3,2x3", "x:1x3,2x3x4,3x3", "x:1xAx3", ":1x3"])
def test_parse_shapes_rejects(spec):
    with pytest.raises(DyconvError, match="--shapes"):
        parse_shapes([spec])


def test_dynamic_batch_gets_the_batch_range_and_static_input_its_shape():
    profile = profile_shapes({"x": (-1, 3, 8, 8), "fixed": (2, 4)}, **BATCH)
    assert profile["x"] == ShapeRange((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))
    assert profile["fixed"] == ShapeRange((2, 4), (2, 4), (2, 4))


def test_explicit_shapes_override_the_batch_rule():
    explicit = ShapeRange((1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 32, 32))
    assert profile_shapes({"x": (-1, 3, -1, -1)}, **BATCH, shapes={"x": explicit}) == {"x": explicit}


@pytest.mark.parametrize("inputs, shapes, match", [
    ({"x": (-1, 3, -1, -1)}, None, "give its range with --shapes x:MIN,OPT,MAX"),
    ({"x": (-1, 3)}, {"y": ShapeRange((1,), (1,), (1,))}, "does not have; its inputs are x"),
    ({"x": (-1, 3)}, {"x": ShapeRange((1,), (1,), (1,))}, "rank 1 but the input has rank 2"),
    ({"x": (-1, 3)}, {"x": ShapeRange((1, 4), (1, 4), (1, 4))}, "dimension 1 is fixed at 3"),
    ({"x": (-1, 3)}, {"x": ShapeRange((4, 3), (2, 3), (8, 3))}, "min <= opt <= max"),
])
def test_profile_errors(inputs, shapes, match):
    with pytest.raises(DyconvError, match=match):
        profile_shapes(inputs, **BATCH, shapes=shapes)


def test_batch_range_must_be_ordered():
    with pytest.raises(DyconvError, match="--min-batch <= --opt-batch"):
        profile_shapes({"x": (-1, 3)}, min_batch=4, opt_batch=2, max_batch=8)


def test_a_batch_of_zero_is_refused():
    """The smallest batch of the profile is at least 1 (a zero-sized batch is no engine shape to tune for)."""
    with pytest.raises(DyconvError, match="need 1 <= --min-batch"):
        profile_shapes({"x": (-1, 3)}, min_batch=0, opt_batch=2, max_batch=8)
