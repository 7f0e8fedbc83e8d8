"""The README's "Python API" example runs and prints what its comments say; runtimes load on first use."""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dyconv_deploy.runtime import load_runtime

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_api_example() -> str:
    section = README.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    return code


def expected_prints(code: str) -> list[str]:
    """The ``# ...`` comment after each ``print(...)`` line: what that line prints."""
    return [line.split("  # ", 1)[1] for line in code.splitlines() if line.startswith("print(") and "  # " in line]


def test_python_api_example_prints_what_it_says(tmp_path, monkeypatch, capsys):
    code = python_api_example()
    expected = expected_prints(code)
    assert len(expected) == 3
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md#python-api", "exec"), {})
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    missing = [line for line in expected if line not in printed]
    assert not missing, f"not printed: {missing}"
    assert (tmp_path / "tiny.onnx").is_file()


def doubling_graph(path: Path) -> Path:
    """``y = 2 * x`` for ``x [batch, 3]``."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("backend", ["ort-cpu", "reference"])
def test_specs_are_there_before_load_or_run(tmp_path, backend):
    runtime = load_runtime(doubling_graph(tmp_path / "double.onnx"), backend)
    assert [(s.name, s.shape) for s in runtime.input_specs] == [("x", ("batch", 3))]
    assert [s.name for s in runtime.output_specs] == ["y"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(runtime.run({"x": x})["y"], 2 * x)


def test_a_runtime_that_failed_to_load_loads_again(tmp_path):
    path = tmp_path / "later.onnx"
    runtime = load_runtime(path, "ort-cpu")
    with pytest.raises(Exception):
        runtime.input_specs  # no file yet
    doubling_graph(path)
    assert [s.name for s in runtime.input_specs] == ["x"]


def test_conflicting_options_are_refused_before_any_work_naming_the_keyword_fixes(tmp_path):
    from dyconv_deploy.workflow import OptionConflict, export_model

    with pytest.raises(OptionConflict, match=r"needs a static batch.*Next: dynamic_batch=False or strategy='experts'"):
        export_model("sample:no_such_sample", tmp_path / "g.onnx", (1, 3, 32, 32), strategy="grouped")
    assert not (tmp_path / "g.onnx").exists()
