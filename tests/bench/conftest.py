"""The scripts of ``benchmarks/`` as modules, for the tests of their CPU-side logic."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on sys.path while it loads, as when it runs as a
    script (``network_bench`` and ``roofline`` import their sibling ``kernel_bench``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(f"_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernel_bench():
    return load_benchmark("kernel_bench")


@pytest.fixture(scope="module")
def network_bench():
    return load_benchmark("network_bench")


@pytest.fixture(scope="module")
def roofline():
    return load_benchmark("roofline")
