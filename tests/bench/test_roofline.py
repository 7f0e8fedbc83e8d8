"""``benchmarks/roofline.py``: the least time of each kernel path and of the static conv at a GPU's peaks.

The bounds are checked against hand counts (tensor-core and SIMT FLOPs at their own rates, bytes at the bandwidth,
the larger of the two plus the launches), the choice of paths per precision (no tensor-core path in true fp32,
``depthwise`` only for depthwise layers), and the network rows against the per-layer rows weighted by uses.
"""

import json

import pytest

from dyconv_deploy.ops import cuda_cost
from dyconv_deploy.ops.cuda_cost import TENSOR_CORE_PATHS, LayerShape, Work, path_work

SAMPLE = "tiny_dynamic"  # 4 dynamic layers, one of them depthwise


def test_a_bound_is_the_slower_of_compute_and_memory_plus_the_launches():
    gpu = cuda_cost.GpuPeaks(fp16_tensor_flops=1e15, tf32_tensor_flops=5e14, fp32_simt_flops=1e14,
                             dram_bytes_per_s=1e12, l2_bytes=2**20)
    # 1e12 FLOPs of which 9e11 on tensor cores: 0.9 ms + 1 ms (the SIMT 1e11); 1e9 bytes: 1 ms; 2 launches.
    compute_bound = Work(flops=1e12, dram_bytes=1e9, launches=2, tensor_flops=9e11)
    assert cuda_cost.bound_seconds(compute_bound, 1e15, gpu, 1e-6) == pytest.approx(1.9e-3 + 2e-6)
    memory_bound = Work(flops=1e12, dram_bytes=3e9, launches=1, tensor_flops=9e11)
    assert cuda_cost.bound_seconds(memory_bound, 1e15, gpu, 1e-6) == pytest.approx(3e-3 + 1e-6)
    # The same FLOPs all on the SIMT units: 10 ms.
    assert cuda_cost.bound_seconds(Work(1e12, 1e9, 1), 1e15, gpu, 0.0) == pytest.approx(1e-2)


def test_the_static_conv_reads_x_and_one_kernel_and_writes_y():
    shape = LayerShape(n=8, c=64, h=14, w=14, m=32, groups=1, kh=3, kw=3, ho=7, wo=7, experts=4, element_bytes=2)
    work = cuda_cost.static_conv_work(shape, on_tensor_cores=True)
    assert work.flops == work.tensor_flops == 2 * 8 * 32 * 64 * 9 * 49
    assert work.dram_bytes == 2 * (8 * 64 * 196 + 32 * 64 * 9 + 8 * 32 * 49) and work.launches == 1
    assert cuda_cost.static_conv_work(shape, on_tensor_cores=False).tensor_flops == 0


def test_each_precision_bounds_the_paths_it_may_run():
    gpu = cuda_cost.ROOFLINE_GPUS["H100"]
    dense = LayerShape(n=32, c=64, h=14, w=14, m=64, groups=1, kh=3, kw=3, ho=14, wo=14, experts=4)
    depthwise = LayerShape(n=32, c=64, h=14, w=14, m=64, groups=64, kh=3, kw=3, ho=14, wo=14, experts=4)
    fp32 = cuda_cost.path_bounds(dense, "fp32", gpu, 2e-6)
    assert set(fp32["path_ratios"]) == {"gemm-fused", "gemm-aggregated"}
    tf32 = cuda_cost.path_bounds(dense, "tf32", gpu, 2e-6)
    assert set(tf32["path_ratios"]) == {"gemm-fused", "gemm-aggregated", "tensor-core-fused",
                                        "tensor-core-aggregated", "tensor-core-experts"}
    assert "depthwise" in cuda_cost.path_bounds(depthwise, "tf32", gpu, 2e-6)["path_ratios"]
    assert tf32["best_ratio"] == min(tf32["path_ratios"].values())
    assert tf32["path_ratios"][tf32["best_path"]] == tf32["best_ratio"]
    # tf32 rows: the static conv on TF32 tensor cores, the experts path's MMAs too; by hand.
    static = max(2 * 32 * 64 * 576 * 196 / gpu.tf32_tensor_flops,
                 4 * (32 * 64 * 196 * 2 + 64 * 576) / gpu.dram_bytes_per_s) + 2e-6
    assert tf32["static_us"] == pytest.approx(static * 1e6)
    experts = path_work(dense, "tensor-core-experts", gpu.l2_bytes)
    by_hand = max(experts.tensor_flops / gpu.tf32_tensor_flops
                  + (experts.flops - experts.tensor_flops) / gpu.fp32_simt_flops,
                  experts.dram_bytes / gpu.dram_bytes_per_s) + 2e-6
    assert tf32["path_ratios"]["tensor-core-experts"] == pytest.approx(by_hand / static)
    # fp16 rows use the fp16 tensor rate (a compute-bound layer: 7.4 GFLOPs, 7.6 MB).
    wide = LayerShape(n=32, c=256, h=14, w=14, m=256, groups=1, kh=3, kw=3, ho=14, wo=14, experts=4, element_bytes=2)
    fp16 = cuda_cost.path_bounds(wide, "fp16", gpu, 0.0)
    assert fp16["static_us"] == pytest.approx(2 * 32 * 256 * 2304 * 196 / gpu.fp16_tensor_flops * 1e6)


def test_tensor_core_work_is_split_from_the_simt_work():
    """path_work says which FLOPs run on tensor cores: all MMAs of the tensor-core paths, none of the SIMT ones."""
    shape = LayerShape(n=8, c=64, h=14, w=14, m=64, groups=1, kh=1, kw=1, ho=14, wo=14, experts=4, pointwise=True)
    for path in ("gemm-fused", "gemm-aggregated", *TENSOR_CORE_PATHS):
        work = path_work(shape, path, 50 * 2**20)
        mixing = 2 * 8 * 4 * 64 * 64  # every sample's kernels mixed once, at least
        if path in TENSOR_CORE_PATHS:
            assert 0 < work.tensor_flops <= work.flops - min(mixing, 2 * 8 * 64 * 196 * 4), path
        else:
            assert work.tensor_flops == 0, path


def test_the_tables_list_every_layer_and_the_network_sums_weigh_layers_by_uses(roofline, tmp_path, monkeypatch):
    layers = roofline.kernel_bench.dynamic_layer_shapes(SAMPLE)
    first = next(iter(layers))
    layers[first] = layers[first] * 3  # as if three layers had that shape: it weighs three times in the sums
    monkeypatch.setattr(roofline.kernel_bench, "SAMPLES", (SAMPLE,))
    monkeypatch.setattr(roofline.kernel_bench, "dynamic_layer_shapes", lambda sample: layers)
    assert roofline.main(["--precisions", "fp16", "fp32", "--batches", "1", "32", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "roofline_H100.json").read_text())
    assert len(data["rows"]) == 2 * 2 * len(layers)
    for network in data["networks"]:
        rows = [r for r in data["rows"] if (r["precision"], r["batch"]) == (network["precision"], network["batch"])]
        assert network["static_us"] == pytest.approx(sum(r["uses"] * r["static_us"] for r in rows))
        assert network["dynamic_us"] == pytest.approx(sum(r["uses"] * r["static_us"] * r["best_ratio"] for r in rows))
        assert network["worst_ratio"] == max(r["best_ratio"] for r in rows)
    assert {r["uses"] for r in data["rows"]} == {1, 3}
    table = (tmp_path / "roofline_H100.md").read_text()
    assert "| fp32 | tiny_dynamic |" in table and "not a measurement" in table
    fp32_rows = [line for line in table.splitlines() if line.startswith("| fp32 | tiny_dynamic |")
                 and line.count("|") > 10]
    assert fp32_rows and all(line.rstrip(" |").endswith("| -") for line in fp32_rows)  # no tensor-core paths


def test_rejects_a_batch_below_one(roofline, tmp_path):
    with pytest.raises(SystemExit):
        roofline.main(["--batches", "0", "--out", str(tmp_path)])
