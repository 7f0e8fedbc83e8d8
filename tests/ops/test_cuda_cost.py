"""The CUDA kernels' cost model (``dyconv_deploy.ops.cuda_cost``) and how ``auto`` uses it, without a GPU.

- :func:`path_work` against hand counts for one layer (FLOPs, DRAM bytes, launches of each path), the
  fused paths' expert re-reads once the experts outgrow half of L2, fp32 vs input-type workspaces.
- :func:`fit_rates` recovers the rates that generated synthetic timings; :func:`calibrate` fits every
  path that applies to enough probes, from a fake timer.
- :func:`choose`: the least predicted time among the paths that apply and are available; TF32 paths
  for float32 only with ``allow_tf32``; ``$DYCONV_CUDA_ALGO`` and ``$DYCONV_CUDA_COST_MODEL=0``.
- The registered CUDA kernel passes the chosen path to the extension; the model is cached on disk
  per GPU and build, and a damaged cache file is calibrated again.
"""

import contextlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.ops import cuda
from dyconv_deploy.ops.cuda_cost import (COST_MODEL_ENV, FORCE_ENV, PATHS, TENSOR_CORE_PATHS, CostModel, LayerShape,
                                         PathRates, calibrate, choose, fit_rates, path_applies, path_work,
                                         probe_shapes)

L2 = 50 * 2**20
# 3x3, C=M=64 at 14x14, batch 8, 4 experts, fp32.
LAYER = LayerShape(n=8, c=64, h=14, w=14, m=64, groups=1, kh=3, kw=3, ho=14, wo=14, experts=4)
POINTWISE = LayerShape(n=8, c=64, h=14, w=14, m=64, groups=1, kh=1, kw=1, ho=14, wo=14, experts=4, pointwise=True)
DEPTHWISE = LayerShape(n=8, c=64, h=14, w=14, m=64, groups=64, kh=3, kw=3, ho=14, wo=14, experts=4)


def test_the_work_of_each_path_matches_a_hand_count():
    kernel = 64 * 64 * 9  # M * C/G * kH * kW
    conv = 2 * 8 * kernel * 196
    mix = 2 * 8 * 4 * kernel
    experts, activations = 4 * kernel * 4, 2 * 8 * 64 * 196 * 4
    tiles = 4  # ceil(196 / 64)
    fused = path_work(LAYER, "gemm-fused", L2)
    assert (fused.flops, fused.dram_bytes, fused.launches) == (conv + mix * tiles, activations + experts, 1)
    aggregated = path_work(LAYER, "gemm-aggregated", L2)
    assert (aggregated.flops, aggregated.dram_bytes, aggregated.launches) == (
        conv + mix, activations + experts + 2 * 8 * kernel * 4, 2)
    dw = path_work(DEPTHWISE, "depthwise", L2)
    assert (dw.flops, dw.dram_bytes) == (2 * 8 * 64 * 9 * 196 + 2 * 8 * 4 * 64 * 9, activations + 4 * 64 * 9 * 4)
    with pytest.raises(DyconvError, match="no cost model for kernel path 'im2col'"):
        path_work(LAYER, "im2col", L2)


def test_tensor_core_paths_count_the_padded_mma_work():
    """WMMA blocks multiply 64 rows x whole 32-deep reduction tiles x 64 pixels, padding included; the experts
    path has K rows per channel (16 channels per tile for K = 4) and mixes in the epilogue."""
    kernel = 64 * 64 * 9
    mix = 2 * 8 * 4 * kernel
    experts, activations = 4 * kernel * 4, 2 * 8 * 64 * 196 * 4
    padded = 2 * 8 * 64 * 576 * 256  # 196 pixels -> 256; 576 reduction is whole 32-tiles
    fused = path_work(LAYER, "tensor-core-fused", L2)
    # tensor-core-fused's blocks are 128 pixels wide on planes over 64: 196 pixels are 2 tiles (256 columns, the
    # same padding), so each sample's kernels are mixed twice, not 4 times.
    assert (fused.flops, fused.dram_bytes, fused.launches) == (padded + 2 * mix, activations + experts, 1)
    aggregated = path_work(LAYER, "tensor-core-aggregated", L2)
    assert (aggregated.flops, aggregated.dram_bytes, aggregated.launches) == (
        padded + mix, activations + experts + 2 * 8 * kernel * 4, 2)
    # The experts path's columns run over the batch: 8 * 196 = 1568 pixels -> 25 tiles = 1600 columns.
    batch_padded = 2 * 64 * 576 * 1600
    by_experts = path_work(LAYER, "tensor-core-experts", L2)
    assert (by_experts.flops, by_experts.dram_bytes, by_experts.launches) == (
        4 * batch_padded + 2 * 8 * 64 * 196 * 4, activations + experts, 1)
    # A depthwise conv: one channel per group fills 1 of 64 rows, 9 taps a whole 32-deep tile.
    dw_mix = 2 * 8 * 4 * 64 * 9
    assert path_work(DEPTHWISE, "tensor-core-fused", L2).flops == 2 * 8 * 64 * 64 * 32 * 256 + 2 * dw_mix
    # 28x28 = 784 pixels: 7 wide tiles (896 columns, 6 mixes); 7x7 = 49: one 64-column tile, one mix.
    large = LayerShape(**{**LAYER.__dict__, "h": 28, "w": 28, "ho": 28, "wo": 28})
    assert path_work(large, "tensor-core-fused", L2).flops == 2 * 8 * 64 * 576 * 896 + 7 * mix
    small = LayerShape(**{**LAYER.__dict__, "h": 7, "w": 7, "ho": 7, "wo": 7})
    assert path_work(small, "tensor-core-fused", L2).flops == 2 * 8 * 64 * 576 * 64 + mix
    assert path_work(large, "gemm-fused", L2).flops == 2 * 8 * kernel * 784 + 13 * mix  # SIMT: 64-pixel tiles
    three = LayerShape(**{**LAYER.__dict__, "experts": 3})  # 21 channels per tile: 64 channels are 4 tiles
    assert path_work(three, "tensor-core-experts", L2).flops == 4 * batch_padded + 2 * 8 * 64 * 196 * 3
    # Once one row tile's experts (16 of the 64 channels) outgrow half of L2, every one of the 25 column tiles
    # reads them again.
    assert path_work(LAYER, "tensor-core-experts", 2 * experts // 4).dram_bytes == by_experts.dram_bytes
    reread = path_work(LAYER, "tensor-core-experts", 2 * experts // 4 - 1).dram_bytes
    assert reread - by_experts.dram_bytes == experts * (25 - 1)


def test_experts_that_outgrow_half_of_l2_are_reread_and_cublas_kernels_take_the_input_type():
    experts = 4 * 64 * 64 * 9 * 4
    small_l2 = path_work(LAYER, "gemm-fused", 2 * experts - 1)
    assert small_l2.dram_bytes - path_work(LAYER, "gemm-fused", 2 * experts).dram_bytes == experts * (8 * 4 - 1)
    aggregated = path_work(LAYER, "gemm-aggregated", 2 * experts - 1)
    assert aggregated.dram_bytes - path_work(LAYER, "gemm-aggregated", 2 * experts).dram_bytes == experts * (8 - 1)
    half = LayerShape(**{**POINTWISE.__dict__, "element_bytes": 2})
    kernels = 8 * 64 * 64
    assert (path_work(half, "gemm-aggregated", L2).dram_bytes - path_work(half, "cublas-pointwise", L2).dram_bytes
            == 2 * kernels * (4 - 2))


def test_paths_apply_to_their_shapes():
    assert [p for p in PATHS if path_applies(DEPTHWISE, p)] == [p for p in PATHS if p != "cublas-pointwise"]
    assert not path_applies(LAYER, "depthwise") and not path_applies(LAYER, "cublas-pointwise")
    assert path_applies(POINTWISE, "cublas-pointwise")
    assert path_applies(LayerShape(**{**LAYER.__dict__, "experts": 64}), "tensor-core-experts")
    assert not path_applies(LayerShape(**{**LAYER.__dict__, "experts": 65}), "tensor-core-experts")


def rates(launch_s: float, flops_per_s: float, bytes_per_s: float) -> PathRates:
    return PathRates(launch_s, 1 / flops_per_s, 1 / bytes_per_s)


def test_fitting_recovers_the_rates_behind_the_timings():
    truth = rates(6e-6, 2e13, 3e12)
    works = [path_work(s, "gemm-aggregated", L2) for s in probe_shapes(4)]
    fitted = fit_rates(works, [truth.seconds(w) for w in works])
    for name in ("launch_s", "s_per_flop", "s_per_byte"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    # Timings that no launch cost explains: that coefficient is dropped, not fitted negative.
    no_launch = rates(0.0, 1e13, 1e12)
    fitted = fit_rates(works, [no_launch.seconds(w) for w in works])
    assert fitted.launch_s >= 0 and fitted.s_per_flop == pytest.approx(1e-13, rel=1e-3)
    # With noise, the fit minimises the squared relative errors, not the absolute ones: a 10 % error on a 12 us
    # probe counts as much as on a 400 us one.
    noisy = np.array([truth.seconds(w) * (1.1 if i % 2 else 0.9) for i, w in enumerate(works)])
    design = np.array([[w.launches, w.flops, w.dram_bytes] for w in works])
    absolute, *_ = np.linalg.lstsq(design / design.max(0), noisy, rcond=None)
    fitted = fit_rates(works, noisy)
    def relative_sse(predicted):
        return float(np.sum((predicted / noisy - 1) ** 2))

    assert relative_sse(np.array([fitted.seconds(w) for w in works])) < 0.9 * relative_sse(
        design / design.max(0) @ absolute)
    with pytest.raises(DyconvError, match=">= 3 positive timings"):
        fit_rates(works[:2], [1e-3, 2e-3])


RATES = {  # a made-up GPU: tensor cores 8x the SIMT FLOPs, fused paths pay for their re-mixing
    "depthwise": rates(5e-6, 5e12, 2e12),
    "gemm-fused": rates(5e-6, 2e13, 2.5e12),
    "gemm-aggregated": rates(5e-6, 2e13, 2.5e12),
    "cublas-pointwise": rates(8e-6, 1.6e14, 2.5e12),
    "tensor-core-fused": rates(5e-6, 1.2e14, 2.5e12),
    "tensor-core-aggregated": rates(5e-6, 1.4e14, 2.5e12),
    "tensor-core-experts": rates(5e-6, 1.5e14, 2.5e12),
}


def fake_model() -> CostModel:
    return calibrate(lambda shape, path, dtype: RATES[path].seconds(path_work(shape, path, L2)), PATHS, "fake", L2)


def test_calibration_fits_every_available_path_from_its_timings():
    model = fake_model()
    assert set(model.rates) == {"float32", "float16"} and set(model.rates["float32"]) == set(PATHS)
    assert model.rates["float16"]["cublas-pointwise"].s_per_flop == pytest.approx(1 / 1.6e14, rel=1e-6)
    timed = []
    calibrate(lambda shape, path, dtype: timed.append(path) or 1e-3, ["gemm-fused"], "fake", L2, ["float32"])
    assert timed == ["gemm-fused"] * len(probe_shapes(4))  # only the paths it is given


def test_choose_takes_the_least_predicted_time_among_paths_that_apply():
    model = fake_model()
    big = LayerShape(n=256, c=256, h=28, w=28, m=256, groups=1, kh=1, kw=1, ho=28, wo=28, experts=4, pointwise=True)
    for shape, dtype in ((big, "float16"), (LAYER, "float16"), (DEPTHWISE, "float32"), (LAYER, "float32")):
        candidates = [p for p in PATHS if path_applies(shape, p)
                      and (dtype == "float16" or p not in TENSOR_CORE_PATHS)]
        best = min(candidates, key=lambda p: model.predict(shape, p, dtype))
        assert choose(model, shape, dtype, PATHS, allow_tf32=False, environ={}) == best
    assert choose(model, big, "float16", PATHS, allow_tf32=False, environ={}) == "cublas-pointwise"
    assert choose(model, big, "float32", PATHS, allow_tf32=False, environ={}) in ("gemm-fused", "gemm-aggregated")
    assert choose(model, big, "float32", PATHS, allow_tf32=True, environ={}) == "cublas-pointwise"  # TF32 allowed
    without_cublas = [p for p in PATHS if p != "cublas-pointwise"]
    assert choose(model, big, "float16", without_cublas, allow_tf32=True, environ={}) == "tensor-core-fused"
    # A GPU on which the experts GEMM runs at the tensor cores' rate while mixing per tile is slow: a late layer at
    # a large batch (7x7 planes, per-sample kernels far larger than the activations) goes to the experts path.
    late = LayerShape(n=256, c=320, h=7, w=7, m=1280, groups=1, kh=1, kw=1, ho=7, wo=7, experts=4, pointwise=True)
    model.rates["float16"]["tensor-core-fused"] = rates(5e-6, 2e13, 2.5e12)
    assert choose(model, late, "float16", without_cublas, allow_tf32=True, environ={}) == "tensor-core-experts"


def test_overrides_force_a_path_or_keep_the_kernels_heuristic():
    model = fake_model()
    assert choose(model, LAYER, "float32", PATHS, False, {FORCE_ENV: "gemm-aggregated"}) == "gemm-aggregated"
    forced_elsewhere = choose(model, LAYER, "float32", PATHS, False, {FORCE_ENV: "depthwise"})  # does not apply
    assert forced_elsewhere == choose(model, LAYER, "float32", PATHS, False, {})
    with pytest.raises(DyconvError, match="DYCONV_CUDA_ALGO='fastest' is not a kernel path"):
        choose(model, LAYER, "float32", PATHS, False, {FORCE_ENV: "fastest"})
    assert choose(model, LAYER, "float32", PATHS, False, {COST_MODEL_ENV: "0"}) == "auto"
    assert choose(None, LAYER, "float32", PATHS, False, {}) == "auto"


def test_the_model_survives_json_and_refuses_anything_else():
    model = fake_model()
    again = CostModel.from_json(model.to_json())
    assert again == model
    assert "Infinity" not in model.to_json() and "NaN" not in model.to_json()  # strict JSON for other tools
    def edited(value):
        data = json.loads(model.to_json())
        data["rates"]["float32"]["gemm-fused"]["s_per_flop"] = value
        return json.dumps(data)

    for text in ("[]", '{"device": "x"}', model.to_json().replace("gemm-fused", "im2col"), edited(-1e-13),
                 edited(float("nan")), edited(float("inf"))):
        with pytest.raises(DyconvError, match="not a dyconv cost model"):
            CostModel.from_json(text)
    with pytest.raises(ValueError):  # a model with a non-finite cost is never written
        CostModel("x", L2, {"float32": {"depthwise": PathRates(float("nan"), 0.0, 0.0)}}).to_json()


def test_the_cuda_kernel_runs_the_chosen_path(monkeypatch):
    calls = []
    monkeypatch.setattr(cuda, "cost_model", fake_model)
    monkeypatch.setattr(cuda, "available_algos", lambda: list(PATHS))
    monkeypatch.setattr(cuda, "dynamic_conv2d_cuda", lambda *args, algo: calls.append(algo))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setitem(cuda._state, "choices", {})
    x, weight = torch.zeros(256, 256, 28, 28, dtype=torch.float16), torch.zeros(4, 256, 256, 1, 1)
    attention = torch.zeros(256, 4)
    cuda._cuda_kernel(x, attention, weight, None, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    shape = cuda.layer_shape(x, weight, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert shape.pointwise and shape.element_bytes == 2 and (shape.ho, shape.wo) == (28, 28)
    assert calls == [choose(fake_model(), shape, "float16", PATHS, False, {})] == ["cublas-pointwise"]
    strided = cuda.layer_shape(torch.zeros(1, 8, 9, 9), torch.zeros(2, 8, 8, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1)
    assert (strided.ho, strided.wo, strided.pointwise, strided.element_bytes) == (5, 5, False, 4)


def fake_calibrating_gpu(monkeypatch, tmp_path) -> tuple[SimpleNamespace, list]:
    """A fake H100-like device whose calibration returns :func:`fake_model`, the cache in ``tmp_path``: the device
    and the list of (device name, L2 bytes) of every calibration."""
    monkeypatch.setenv("DYCONV_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.setitem(cuda._state, "cost_models", {})
    device = SimpleNamespace(name="Fake GPU", major=9, minor=0, multi_processor_count=132, L2_cache_size=L2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: device)
    monkeypatch.setattr(cuda, "available_algos", lambda: list(PATHS))
    calibrations: list = []
    monkeypatch.setattr(cuda, "calibrate", lambda *args: calibrations.append(args[2:]) or fake_model())
    return device, calibrations


def test_the_model_is_calibrated_once_per_gpu_and_build_and_cached(monkeypatch, tmp_path):
    device, calibrations = fake_calibrating_gpu(monkeypatch, tmp_path)
    first = cuda.cost_model()
    assert calibrations == [("Fake GPU", L2)]
    [cached] = (tmp_path / "cuda-cost").glob("*.json")
    assert CostModel.from_json(cached.read_text()) == first
    monkeypatch.setitem(cuda._state, "cost_models", {})  # a new process reads the file
    assert cuda.cost_model() == first and len(calibrations) == 1
    cached.write_text("{not json")
    monkeypatch.setitem(cuda._state, "cost_models", {})
    assert cuda.cost_model() == first and len(calibrations) == 2  # damaged: calibrated again, rewritten
    assert CostModel.from_json(cached.read_text()) == first
    device.name = "Other GPU"
    cuda.cost_model()
    device.multi_processor_count = 114  # the same GPU with fewer multiprocessors (a MIG slice, an H100 PCIe)
    cuda.cost_model()
    monkeypatch.setattr(cuda, "available_algos", lambda: [p for p in PATHS if p != "cublas-pointwise"])
    cuda.cost_model()  # a build without cuBLAS
    assert len(list((tmp_path / "cuda-cost").glob("*.json"))) == 4 == len(calibrations) - 1


def test_while_a_cuda_graph_is_captured_a_new_shape_is_not_calibrated(monkeypatch):
    monkeypatch.setattr(cuda, "cost_model", lambda: pytest.fail("calibrated during capture"))
    monkeypatch.setattr(cuda, "available_algos", lambda: list(PATHS))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setitem(cuda._state, "choices", {})
    x, weight, attention = torch.zeros(1, 8, 5, 5), torch.zeros(2, 8, 8, 1, 1), torch.zeros(1, 2)
    assert cuda.chosen_algo(x, attention, weight) == "auto" and cuda._state["choices"] == {}


def test_each_gpu_gets_its_own_choice(monkeypatch):
    """The choice is cached per device: a second GPU whose model prefers another path is asked again."""
    fast, slow = fake_model(), fake_model()
    shape_x = (256, 256, 28, 28)
    weight, attention = torch.zeros(4, 256, 256, 1, 1), torch.zeros(256, 4)
    first = choose(fast, cuda.layer_shape(torch.zeros(shape_x), weight, (1, 1), (0, 0, 0, 0), (1, 1), 1),
                   "float32", PATHS, False, {})
    slow.rates["float32"][first] = PathRates(1.0, 1.0, 1.0)  # this GPU runs that path very slowly
    models = {0: fast, 1: slow}
    current = {"index": 0}

    @contextlib.contextmanager
    def device(d):
        current["index"] = d.index
        yield

    monkeypatch.setattr(cuda, "cost_model", lambda: models[current["index"]])
    monkeypatch.setattr(cuda, "available_algos", lambda: list(PATHS))
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setitem(cuda._state, "choices", {})
    choices = []
    for index in (0, 1):
        x = SimpleNamespace(shape=shape_x, dtype=torch.float32, element_size=lambda: 4,
                            device=SimpleNamespace(index=index))
        choices.append(cuda.chosen_algo(x, attention, weight))
    assert choices[0] == first and choices[1] != first


def test_depthwise_is_one_input_channel_per_group_whatever_the_outputs():
    """``depthwise`` applies on C/G == 1 (also with a channel multiplier, M/G > 1), never on a dense conv that merely
    has one output channel per group."""
    multiplier = LayerShape(n=2, c=32, h=14, w=14, m=64, groups=32, kh=3, kw=3, ho=14, wo=14, experts=4)
    assert path_applies(multiplier, "depthwise")
    to_one = LayerShape(n=2, c=64, h=14, w=14, m=1, groups=1, kh=3, kw=3, ho=14, wo=14, experts=4)
    assert not path_applies(to_one, "depthwise")
    assert not path_applies(LAYER, "auto") and not path_applies(LAYER, "im2col")  # not kernel paths at all


def test_a_strided_layer_reads_x_at_its_input_size_and_writes_y_at_its_output_size():
    """DRAM bytes of a stride-2 layer by hand: X at 16x16, Y at 8x8 (the other tests have Ho == H)."""
    strided = LayerShape(n=2, c=8, h=16, w=16, m=16, groups=1, kh=3, kw=3, ho=8, wo=8, experts=4)
    x_bytes, y_bytes, expert_bytes = 2 * 8 * 16 * 16 * 4, 2 * 16 * 8 * 8 * 4, 4 * 16 * 8 * 9 * 4
    assert path_work(strided, "gemm-fused", L2).dram_bytes == x_bytes + y_bytes + expert_bytes
    assert path_work(strided, "depthwise", L2).dram_bytes == x_bytes + y_bytes + expert_bytes


def test_fitting_refuses_timings_that_are_not_positive():
    """A zero or negative timing (a broken timer) would divide the relative errors by zero: refused, not fitted."""
    works = [path_work(s, "gemm-aggregated", L2) for s in probe_shapes(4)][:4]
    for bad in (0.0, -1e-3):
        with pytest.raises(DyconvError, match=">= 3 positive timings"):
            fit_rates(works, [1e-3, bad, 2e-3, 3e-3])


def test_fitting_drops_the_coefficient_that_would_be_negative_not_another():
    """Timings that fall as FLOPs grow (no physical FLOP cost): the FLOP rate is the one dropped (0), the launch and
    byte rates are kept and refitted, both positive."""
    truth = rates(6e-6, 2e13, 3e12)
    works = [path_work(s, "gemm-aggregated", L2) for s in probe_shapes(4)]
    most = max(w.flops for w in works)
    seconds = [(w.launches * truth.launch_s + w.dram_bytes * truth.s_per_byte) * (1 - 0.3 * w.flops / most)
               for w in works]
    fitted = fit_rates(works, seconds)
    assert fitted.s_per_flop == 0
    assert fitted.launch_s > 0 and fitted.s_per_byte > 0


def test_half_precision_rates_are_fitted_on_half_precision_probes():
    """float16 probes move 2-byte elements: timing them as 4-byte shapes would fit the float16 byte rate on twice
    the bytes that crossed DRAM."""
    timed = []
    calibrate(lambda shape, path, dtype: timed.append((dtype, shape.element_bytes)) or 1e-3, ["gemm-fused"], "fake",
              L2)
    assert sorted(set(timed)) == [("float16", 2), ("float32", 4)]


def test_a_forced_path_the_build_lacks_falls_back_to_the_model():
    """``$DYCONV_CUDA_ALGO=cublas-pointwise`` on a build without cuBLAS: the model's choice, never a path the extension
    cannot run."""
    model = fake_model()
    without_cublas = [p for p in PATHS if p != "cublas-pointwise"]
    forced = choose(model, POINTWISE, "float16", without_cublas, True, {FORCE_ENV: "cublas-pointwise"})
    assert forced == choose(model, POINTWISE, "float16", without_cublas, True, {}) != "cublas-pointwise"


def test_the_model_never_picks_a_path_that_does_not_apply():
    """However cheap the model says ``depthwise`` and ``cublas-pointwise`` are, a dense padded 3x3 conv gets neither."""
    model = fake_model()
    for dtype in ("float32", "float16"):
        model.rates[dtype]["depthwise"] = model.rates[dtype]["cublas-pointwise"] = PathRates(0.0, 0.0, 0.0)
        assert choose(model, LAYER, dtype, PATHS, True, {}) not in ("depthwise", "cublas-pointwise")
    assert choose(model, DEPTHWISE, "float32", PATHS, True, {}) == "depthwise"


def test_a_layers_shape_reads_each_axis_padding_stride_and_dilation():
    """``padding`` is (top, left, bottom, right): Ho from top + bottom with the first stride and dilation, Wo from
    left + right with the second; a padded 1x1 conv is not pointwise (cuBLAS would ignore the padding)."""
    x, weight = torch.zeros(1, 8, 9, 11), torch.zeros(2, 8, 8, 3, 3)
    shape = cuda.layer_shape(x, weight, (2, 1), (1, 2, 3, 0), (1, 2), 1)
    assert (shape.ho, shape.wo) == ((9 + 1 + 3 - 2 - 1) // 2 + 1, (11 + 2 + 0 - 4 - 1) // 1 + 1) == (6, 9)
    padded = cuda.layer_shape(x, torch.zeros(2, 8, 8, 1, 1), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert not padded.pointwise and (padded.ho, padded.wo) == (11, 13)


def fake_gpu_choice(monkeypatch, model=fake_model):
    monkeypatch.setattr(cuda, "cost_model", model)
    monkeypatch.setattr(cuda, "available_algos", lambda: list(PATHS))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setitem(cuda._state, "choices", {})
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.delenv(COST_MODEL_ENV, raising=False)


def test_the_overrides_set_after_a_choice_still_take_effect(monkeypatch):
    """The cached choice is keyed by ``$DYCONV_CUDA_ALGO`` and ``$DYCONV_CUDA_COST_MODEL``: setting either after a
    shape was seen (a test, a measurement of one path) changes what that shape runs."""
    fake_gpu_choice(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, weight, attention = torch.zeros(8, 64, 14, 14), torch.zeros(4, 64, 64, 3, 3), torch.zeros(8, 4)
    padding = (1, 1, 1, 1)
    first = cuda.chosen_algo(x, attention, weight, padding=padding)
    other = "gemm-aggregated" if first != "gemm-aggregated" else "gemm-fused"
    monkeypatch.setenv(FORCE_ENV, other)
    assert cuda.chosen_algo(x, attention, weight, padding=padding) == other
    monkeypatch.delenv(FORCE_ENV)
    monkeypatch.setenv(COST_MODEL_ENV, "0")
    assert cuda.chosen_algo(x, attention, weight, padding=padding) == "auto"


def test_with_the_cost_model_off_nothing_is_calibrated(monkeypatch):
    """``$DYCONV_CUDA_COST_MODEL=0`` keeps the kernels' heuristic without timing the probes first."""
    fake_gpu_choice(monkeypatch, lambda: pytest.fail("calibrated with the cost model off"))
    monkeypatch.setenv(COST_MODEL_ENV, "0")
    x, weight, attention = torch.zeros(1, 8, 5, 5), torch.zeros(2, 8, 8, 1, 1), torch.zeros(1, 2)
    assert cuda.chosen_algo(x, attention, weight) == "auto"


def test_tf32_paths_follow_cudnns_tf32_switch_not_matmuls(monkeypatch):
    """float32 goes to a tensor-core path exactly when ``torch.backends.cudnn.allow_tf32`` lets cuDNN's static conv
    use TF32 (the matmul switch, off by default, is another matter)."""
    fake_gpu_choice(monkeypatch)
    weight, attention = torch.zeros(4, 256, 256, 1, 1), torch.zeros(256, 4)
    x = SimpleNamespace(shape=(256, 256, 28, 28), dtype=torch.float32, element_size=lambda: 4,
                        device=SimpleNamespace(index=0))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32  # a property: no monkeypatch
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        assert cuda.chosen_algo(x, attention, weight) == "cublas-pointwise"
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
        assert cuda.chosen_algo(x, attention, weight) not in TENSOR_CORE_PATHS
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_recalibrating_replaces_the_model_already_loaded(monkeypatch, tmp_path):
    """``cost_model(recalibrate=True)`` times the probes again even when this process holds a model."""
    _, calibrations = fake_calibrating_gpu(monkeypatch, tmp_path)
    cuda.cost_model()
    cuda.cost_model()
    assert len(calibrations) == 1
    cuda.cost_model(recalibrate=True)
    assert len(calibrations) == 2


def test_a_call_is_timed_per_call_over_its_groups_median(monkeypatch):
    """:func:`median_call_ms`: warm-up calls untimed, each group's event time divided by its calls, the median of the
    groups. A fake clock: each call of ``fn`` advances it by the next of ``durations`` ms."""
    durations = iter([100.0, 100.0, 100.0, 1.0, 3.0, 2.0, 2.0, 5.0, 5.0])  # 3 warm-up calls, then 3 groups of 2
    clock = {"ms": 0.0}

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock["ms"]

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.at - self.at

    def fn():
        clock["ms"] += next(durations)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    assert cuda.median_call_ms(fn, iterations=2, repeats=3) == 2.0  # per call: 2, 2, 5


def test_the_fused_paths_reread_the_experts_only_when_one_row_tiles_share_outgrows_l2():
    """Blocks run in grid order, pixel (column) tiles fastest, so the blocks running at once read one 64-row tile's
    experts per group: 512 channels are 8 row tiles, so the experts may be 8x half of L2 before they are re-read.
    """
    wide = LayerShape(n=8, c=64, h=14, w=14, m=512, groups=1, kh=3, kw=3, ho=14, wo=14, experts=4)
    experts = 4 * 512 * 64 * 9 * 4
    slice_bytes = experts // 8
    for path, tiles in (("gemm-fused", 8 * 4), ("tensor-core-fused", 8 * 2)):
        fits = path_work(wide, path, 2 * slice_bytes).dram_bytes
        assert path_work(wide, path, 2 * slice_bytes - 1).dram_bytes - fits == experts * (tiles - 1), path
        assert fits == path_work(wide, path, 2 * experts).dram_bytes, path
    # tensor-core-experts: 16 channels a row tile for K = 4, 1568 batch columns = 25 column tiles.
    share = experts * 16 // 512
    fits = path_work(wide, "tensor-core-experts", 2 * share).dram_bytes
    assert path_work(wide, "tensor-core-experts", 2 * share - 1).dram_bytes - fits == experts * (25 - 1)
