"""``benchmarks/network_bench.py`` without a GPU: the interleaved timing, both phases end to end, the table and
``--list``.

The timing itself needs a GPU (``benchmarks/gpu_check.sh``, step ``network``). Here the whole flow runs on the CPU
with ``tiny_dynamic`` and a stand-in :class:`Device`: a timer that runs the forward once and returns a clock that
ticks by one per call, and, for "registering the kernels", a swap of the op's CPU kernel, as
``enable_cuda_kernels`` swaps its CUDA one.
"""

import json
from pathlib import Path

import pytest
import torch

from dyconv_deploy.ops import torch_op

SAMPLE = "tiny_dynamic"  # 4 dynamic layers, one of them depthwise
BATCHES = [1, 2, 8]
OOM_BATCH = 8
ROUNDS = 3
REFERENCE_KERNEL = torch_op.dynamic_conv2d_reference


@pytest.fixture(autouse=True)
def _tf32_flags():
    """The run sets the TF32 flags per precision: restored after each test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def kernel_path(x, attention, weight, stride, padding, dilation, groups) -> str:
    """A stand-in cost model: one path for depthwise layers, another for the rest."""
    return "depthwise" if groups > 1 else "gemm-fused"


def measured_cells(json_path: Path) -> int:
    """How many phase cells (timings or OOM) the report on disk holds; 0 before the first write."""
    if not json_path.exists():
        return 0
    rows = json.loads(json_path.read_text())["rows"]
    return sum(row[phase] is not None for row in rows for phase in ("reference", "ours"))


class Flow:
    """One CPU run of :func:`network_bench.run` on ``tiny_dynamic`` with batch ``OOM_BATCH`` out of memory and
    ``ours`` computed by ``ours_kernel`` (the op's CPU kernel from the moment the kernels are "registered")."""

    def __init__(self, network_bench, tmp_path: Path, monkeypatch, ours_kernel, precisions=("fp32", "fp16"),
                 activities=(), profile_batch=None):
        self.stem = tmp_path / "network_bench_cpu"
        self.clock = 0
        self.cells_on_disk: list[int] = []  # what the report held at each timed group

        def kernel_out_of_memory_at_the_oom_batch(kernel):
            def run(x, *args):
                if x.shape[0] == OOM_BATCH:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return kernel(x, *args)
            return run

        monkeypatch.setattr(torch_op, "dynamic_conv2d_reference",
                            kernel_out_of_memory_at_the_oom_batch(REFERENCE_KERNEL))
        device = network_bench.Device(
            "cpu", self.timer, lambda: monkeypatch.setattr(torch_op, "dynamic_conv2d_reference",
                                                           kernel_out_of_memory_at_the_oom_batch(ours_kernel)),
            kernel_path, activities)
        self.status = network_bench.run([SAMPLE], list(precisions), BATCHES, device, ROUNDS, self.stem, "# header",
                                        {"gpu": "cpu"}, profile_batch)
        self.report = json.loads(self.stem.with_suffix(".json").read_text())
        self.table = self.stem.with_suffix(".md").read_text()

    def timer(self, fn) -> float:
        """Runs ``fn`` once; "ms" is the number of timed groups so far (each group takes 1 ms longer)."""
        self.cells_on_disk.append(measured_cells(self.stem.with_suffix(".json")))
        fn()
        self.clock += 1
        return float(self.clock)


def another_samples_attention(x, attention, *args):
    """A defect the batch-2 check must catch: every image mixed with its neighbour's attention."""
    return REFERENCE_KERNEL(x, attention.roll(1, 0), *args)


def test_the_variants_alternate_and_each_gets_the_median_of_its_rounds(network_bench):
    calls = []
    times = {"dynamic": iter([5.0, 1.0, 3.0]), "twin": iter([2.0, 9.0, 4.0])}
    runners = {name: (lambda name=name: calls.append(name)) for name in times}

    def timer(run):
        run()
        return next(times[calls[-1]])

    medians = network_bench.interleaved_ms(runners, timer, rounds=3, warmup=2)
    assert calls == ["dynamic"] * 2 + ["twin"] * 2 + ["dynamic", "twin"] * 3
    assert medians == {"dynamic": 3.0, "twin": 4.0}


def test_both_phases_against_the_twin_of_their_own_rounds(network_bench, tmp_path, monkeypatch):
    flow = Flow(network_bench, tmp_path, monkeypatch, REFERENCE_KERNEL)
    assert flow.status == 0
    rows = flow.report["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [(p, b) for p in ("fp32", "fp16") for b in BATCHES]
    reference_ticks = flow.clock // 2  # the reference phase timed the first half of the groups
    for row in rows:
        if row["batch"] == OOM_BATCH:
            continue
        for phase in ("reference", "ours"):
            entry = row[phase]
            # dynamic and twin alternate, so in each measurement the twin's median is 1 ms after the dynamic one's
            assert entry["twin_ms"] == entry["dynamic_ms"] + 1
            assert entry["ratio"] == pytest.approx(entry["dynamic_ms"] / entry["twin_ms"])
        assert row["reference"]["twin_ms"] <= reference_ticks < row["ours"]["twin_ms"]
        assert row["paths"] == {"gemm-fused": 3, "depthwise": 1}  # one count per dynamic layer
    assert [(c["precision"], c["tolerance"], c["passed"]) for c in flow.report["checks"]] == [
        ("fp32", "fp32", True), ("fp16", "fp16", True)]


def test_a_batch_out_of_memory_is_an_oom_row_and_the_run_goes_on(network_bench, tmp_path, monkeypatch):
    flow = Flow(network_bench, tmp_path, monkeypatch, REFERENCE_KERNEL, precisions=("fp32",))
    oom_row = next(r for r in flow.report["rows"] if r["batch"] == OOM_BATCH)
    assert oom_row["reference"] == oom_row["ours"] == {"OOM": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert oom_row["paths"] is None and flow.status == 0
    line = next(line for line in flow.table.splitlines() if line.startswith(f"| fp32 | {SAMPLE} | {OOM_BATCH} |"))
    assert line.count("| OOM ") == 6


def test_the_report_is_rewritten_after_every_measurement(network_bench, tmp_path, monkeypatch):
    flow = Flow(network_bench, tmp_path, monkeypatch, REFERENCE_KERNEL, precisions=("fp32",))
    groups = 2 * ROUNDS  # dynamic and twin, ROUNDS times each, per measurement that fits in memory
    # reference b=1, b=2, (b=8 OOM), ours b=1, b=2: each sees every cell measured before it on disk
    assert flow.cells_on_disk == [0] * groups + [1] * groups + [3] * groups + [4] * groups
    assert measured_cells(flow.stem.with_suffix(".json")) == 2 * len(BATCHES)


def test_a_mismatch_is_in_the_table_and_the_exit_status_but_the_timing_goes_on(network_bench, tmp_path,
                                                                             monkeypatch):
    flow = Flow(network_bench, tmp_path, monkeypatch, another_samples_attention, precisions=("fp32",))
    assert flow.status == 1
    (check,) = flow.report["checks"]
    assert not check["passed"] and check["tolerance_used"] > 1
    assert all(r["ours"] is not None for r in flow.report["rows"])
    assert all("| MISMATCH, " in line for line in flow.table.splitlines() if line.startswith("| fp32 |"))


def test_the_table_marks_unmeasured_and_oom_cells(network_bench):
    rows = [{"precision": "fp16", "sample": "dy_mobilenetv2", "batch": 256,
             "reference": network_bench.timing_entry(30.0, 10.0), "ours": network_bench.timing_entry(11.0, 10.0),
             "paths": {"tensor-core-fused": 30, "depthwise": 17}},
            {"precision": "fp16", "sample": "dy_resnet18", "batch": 256, "reference": {"OOM": "out of memory"},
             "ours": None, "paths": None}]
    checks = {("dy_mobilenetv2", "fp16"): {"tolerance": "fp16", "passed": True, "max_abs": 1e-3,
                                           "tolerance_used": 0.25}}
    table = network_bench.markdown(rows, checks, "# header")
    header, rule, *lines = table.splitlines()[2:]
    columns = [c.strip() for c in header.strip("|").split("|")]
    measured, oom = ({c: v.strip() for c, v in zip(columns, line.strip("|").split("|"), strict=True)}
                     for line in lines)
    assert len(set(columns)) == len(columns) == rule.count("---")
    assert measured["reference / twin"] == "3.00" and measured["ours / twin"] == "1.10"
    assert measured["ours paths (layers)"] == "tensor-core-fused 30, depthwise 17"
    assert measured["twin ms (with reference)"] == measured["twin ms (with ours)"] == "10.000"
    assert measured["ours vs reference (b=2)"] == "ok, 0.25 of tolerance fp16"
    assert (oom["reference ms"], oom["reference / twin"], oom["ours ms"], oom["ours / twin"]) == (
        "OOM", "OOM", "-", "-")
    assert oom["ours vs reference (b=2)"] == "-"
    report = json.loads(network_bench.report_json(rows, checks, {"gpu": "H100"}))
    assert report["gpu"] == "H100" and report["checks"][0]["sample"] == "dy_mobilenetv2"


def test_list_works_on_a_cpu_and_the_benchmark_needs_a_gpu(network_bench, monkeypatch, capsys):
    assert network_bench.main(["--list", "--precisions", "fp16", "--batches", "256"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("precisions fp16; batches 256;")
    assert "dy_mobilenetv2 (3x224x224): 51 dynamic layers, twin sample:dy_mobilenetv2_static" in out
    assert "dy_resnet18 (3x224x224): 19 dynamic layers, twin sample:dy_resnet18_static" in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert network_bench.main(["--samples", SAMPLE]) == 2
    assert capsys.readouterr().err.startswith("network_bench: no CUDA device")


def test_kernel_names_lose_return_type_namespaces_and_arguments(network_bench):
    name = ("void dyconv::(anonymous namespace)::tensor_core_kernel<__half, true, "
            "(dyconv::(anonymous namespace)::TensorCoreRows)0>(dyconv::ConvShape, dyconv::(anonymous namespace)"
            "::Typed<__half>, __half const*)")
    assert network_bench.short_kernel_name(name) == (
        "dyconv::tensor_core_kernel<__half, true, (dyconv::TensorCoreRows)0>")
    assert network_bench.short_kernel_name("aten::conv2d") == "aten::conv2d"
    assert network_bench.short_kernel_name("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_nhwckrsc_nhwc") == (
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_nhwckrsc_nhwc")
    assert len(network_bench.short_kernel_name("k" * 300)) == 120


def test_a_profile_counts_each_kernel_per_forward_most_expensive_first(network_bench):
    from torch.profiler import ProfilerActivity

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        profile = network_bench.kernel_profile(lambda: model(x), (ProfilerActivity.CPU,), forwards=3, top=2)
    assert profile["forwards"] == 3 and len(profile["kernels"]) == 2
    listed = [k["ms"] for k in profile["kernels"]]
    assert listed == sorted(listed, reverse=True)
    assert profile["kernel_ms"] == pytest.approx(sum(listed) + profile["other_ms"])
    assert all(k["share"] == pytest.approx(k["ms"] / profile["kernel_ms"]) for k in profile["kernels"])
    full = network_bench.kernel_profile(lambda: model(x), (ProfilerActivity.CPU,), forwards=3, top=100)
    calls = {k["name"]: k["calls"] for k in full["kernels"]}
    assert calls["aten::conv2d"] == 2 and calls["aten::relu"] == 1  # per forward, not per profile
    assert full["other_ms"] == 0


def test_ours_and_the_twin_are_profiled_at_the_profile_batch(network_bench, tmp_path, monkeypatch):
    from torch.profiler import ProfilerActivity

    flow = Flow(network_bench, tmp_path, monkeypatch, REFERENCE_KERNEL, precisions=("fp32",),
                activities=(ProfilerActivity.CPU,), profile_batch=2)
    profiled = [r for r in flow.report["rows"] if r["profile"]]
    assert [r["batch"] for r in profiled] == [2]
    ours = {k["name"]: k["calls"] for k in profiled[0]["profile"]["ours"]["kernels"]}
    twin = {k["name"]: k["calls"] for k in profiled[0]["profile"]["twin"]["kernels"]}
    # All 4 dynamic layers of a forward in ours' profile, none in the twin's (its static convs instead).
    assert ours.get("dyconv::dynamic_conv2d") == 4 and "dyconv::dynamic_conv2d" not in twin
    twin_convs = sum(isinstance(m, torch.nn.Conv2d) for m in network_bench.load_twins(SAMPLE)[1].modules())
    assert twin.get("aten::mkldnn_convolution") == twin_convs
    assert f"### Where the time goes: fp32 {SAMPLE} batch 2" in flow.table
    assert "| `dyconv::dynamic_conv2d` | 4 |" in flow.table


def test_without_profiler_activities_nothing_is_profiled(network_bench, tmp_path, monkeypatch):
    flow = Flow(network_bench, tmp_path, monkeypatch, REFERENCE_KERNEL, precisions=("fp32",), profile_batch=2)
    assert all(r["profile"] is None for r in flow.report["rows"]) and "Where the time goes" not in flow.table


def test_the_profile_batch_must_be_one_of_the_batches(network_bench):
    with pytest.raises(SystemExit):
        network_bench.main(["--batches", "1", "32", "--profile-batch", "8"])


def test_an_oom_cell_keeps_the_first_line_and_the_cache_is_emptied(network_bench, monkeypatch):
    """``measure`` on a batch out of GPU memory: the cell holds the error's first line (PyTorch's message goes on
    for lines), no path counts, and the caching allocator is emptied so the next batch gets the memory."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def out_of_memory(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has a total ...")

    device = network_bench.Device("cpu", lambda fn: fn() or 1.0, lambda: None, kernel_path)
    entry, paths = network_bench.measure(out_of_memory, out_of_memory, torch.zeros(1), device, 1, count_paths=True)
    assert entry == {"OOM": "CUDA out of memory. Tried to allocate 2.00 GiB."} and paths is None
    assert emptied == [True]


def test_tf32_rows_are_checked_at_fp16s_tolerance_and_fp32_rows_at_fp32s(network_bench):
    """TF32 rounds every conv's operands to 11 bits: a 0.3 % end-to-end error passes a tf32 row's check, while in a
    true-fp32 row it is a mismatch."""
    reference = torch.linspace(-2, 2, 101)
    ours = reference * (1 + 3e-3)
    tf32 = network_bench.check_entry(ours, reference, "tf32", "tf32")
    assert (tf32["tolerance"], tf32["passed"]) == ("fp16", True)
    assert not network_bench.check_entry(ours, reference, "fp32", "fp32")["passed"]


def test_each_precision_is_timed_under_its_tf32_flags_and_paths_are_counted_once_registered(network_bench, tmp_path,
                                                                                           monkeypatch):
    """One run over tf32 and fp32: every timed group runs under its precision's TF32 switches (cuDNN and matmul),
    the paths are asked only after the kernels are registered (in ``ours``: the reference phase has no paths), and
    a check is on disk before the first timing of its phase."""
    stem, registered, seen = tmp_path / "network_bench_cpu", [], []

    def timer(fn):
        report = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
        seen.append((bool(registered), torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                     len(report.get("checks", []))))
        fn()
        return 1.0

    def path_of(*args):
        assert registered, "a path asked for before the kernels were registered"
        return kernel_path(*args)

    device = network_bench.Device("cpu", timer, lambda: registered.append(True), path_of)
    assert network_bench.run([SAMPLE], ["tf32", "fp32"], [1], device, 1, stem, "# header", {"gpu": "cpu"}) == 0
    assert seen == [(False, True, True, 0)] * 2 + [(False, False, False, 0)] * 2 + [
        (True, True, True, 1)] * 2 + [(True, False, False, 2)] * 2


def test_a_profile_out_of_memory_is_an_oom_entry_and_the_run_goes_on(network_bench, monkeypatch):
    from torch.profiler import ProfilerActivity

    def out_of_memory(fn, activities):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB\nmore")

    emptied = []
    monkeypatch.setattr(network_bench, "kernel_profile", out_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    model = torch.nn.Conv2d(3, 4, 3)
    entry = network_bench.profile_entry(model, model, torch.zeros(1, 3, 8, 8), (ProfilerActivity.CPU,))
    assert entry == {"OOM": "CUDA out of memory. Tried to allocate 1.00 GiB"} and emptied == [True]
    row = {"precision": "fp16", "sample": "dy_resnet18", "batch": 256, "reference": None,
           "ours": network_bench.timing_entry(2.0, 1.0), "paths": None, "profile": entry}
    assert "Where the time goes" not in network_bench.markdown([row], {}, "# header")
