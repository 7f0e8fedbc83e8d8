"""tiny_dynamic end to end on TensorRT: plugin graph -> engine with the built plugin library -> verify.

One engine per precision serves batch 1, 3 and 8 (its profile's min, opt and max), checked against
PyTorch eager; the same comparison must fail for a model whose samples get each other's attention.
Runs wherever TensorRT and a CUDA device exist; the plugin library is the one ``plugins/ci_compile.sh``
built, else built here when the TensorRT headers and nvcc are found.
"""

import pytest
from guards import assert_fails, rolled_attention

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.verify import verify_onnx
from dyconv_deploy.workflow import export_model, verify_model
from dyconv_deploy.io import load_model
from dyconv_deploy.io.model_spec import default_input_shape
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.trt import plugin
from dyconv_deploy.trt.build import build_engine

TINY = "sample:tiny_dynamic"
BATCHES = (1, 3, 8)


@pytest.fixture(scope="module")
def plugin_library(tensorrt_gpu, tmp_path_factory):
    try:
        return plugin.locate_plugin_library()
    except DyconvError:
        pass
    try:
        plugin.find_tensorrt_headers()
        plugin.find_nvcc()
    except DyconvError as exc:
        pytest.skip(f"the plugin library is not built and cannot be built here: {exc}")
    return plugin.build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def plugin_graph(tensorrt_gpu, tmp_path_factory):
    path = tmp_path_factory.mktemp("end-to-end") / "tiny_plugin.onnx"
    export_model(TINY, path, default_input_shape(TINY), strategy="plugin", verify=False)
    return path


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_engine_matches_pytorch_at_batch_1_3_8(plugin_graph, plugin_library, precision, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("DYCONV_PLUGIN_LIBRARY", str(plugin_library))  # where the runtime looks for it
    engine = build_engine(plugin_graph, tmp_path / f"tiny-{precision}.engine", min_batch=BATCHES[0],
                          opt_batch=BATCHES[1], max_batch=BATCHES[-1], fp16=precision == "fp16",
                          plugin_library=plugin_library, progress=False)
    tolerance = TOLERANCES[precision]
    comparisons = verify_model(TINY, engine, batches=BATCHES, tolerance=tolerance)  # raises when over tolerance
    assert [c.name.rpartition("@")[2] for c in comparisons] == [f"batch{b}" for b in BATCHES]
    model = load_model(TINY)
    with rolled_attention(model):
        assert_fails(verify_onnx(model, engine, default_input_shape(TINY), BATCHES, tolerance),
                     "giving sample n sample n-1's attention")
