"""``benchmarks/network_bench.py`` without a GPU: the interleaved timing, both phases end to end, the table and
``--list``.

The timing itself needs a GPU (``benchmarks/gpu_check.sh``, step ``network``). Here the whole flow runs on the CPU
with ``tiny_dynamic`` and a stand-in :class:`Device`: a timer that runs the forward once and returns a clock that
ticks by one per call, and, for "registering the kernels", a swap of the op's CPU kernel, as
``enable_cuda_kernels`` swaps its CUDA one.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dyconv_deploy.ops import torch_op

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SAMPLE = "tiny_dynamic"  # 4 dynamic layers, one of them depthwise
BATCHES = [1, 2, 8]
OOM_BATCH = 8
ROUNDS = 3
REFERENCE_KERNEL = torch_op.dynamic_conv2d_reference


@pytest.fixture(scope="module")
def network_bench():
    """``benchmarks/network_bench.py`` as a module, with ``benchmarks/`` on sys.path for its ``import kernel_bench``,
    as when it runs as a script."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("_network_bench", BENCHMARKS / "network_bench.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


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

    def __init__(self, network_bench, tmp_path: Path, monkeypatch, ours_kernel, precisions=("fp32", "fp16")):
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
            kernel_path)
        self.status = network_bench.run([SAMPLE], list(precisions), BATCHES, device, ROUNDS, self.stem, "# header",
                                        {"gpu": "cpu"})
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
