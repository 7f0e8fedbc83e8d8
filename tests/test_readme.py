"""The README's command blocks work as written.

Every command in a ```bash block that starts with ``dyconv-deploy `` (continuation lines
ending in ``\\`` joined) must exit 0, and those in ``CHECKS`` must produce what the README says
they produce. They run in README order through bash, in one shared temporary directory (so a
command may use a file an earlier one wrote, and the graph cache is there too), with this
interpreter's scripts first on PATH; ``build-plugin`` commands run first, since the
``build-engine`` command uses the library they build. A command whose trailing comment ends in
``needs-gpu`` (``# needs-gpu``, or ``# TensorRT backend; needs-gpu``) needs a CUDA device,
TensorRT and nvcc: it is skipped, naming what is missing, where one of them is. The block with
the test command must match what ``.ci/run`` runs.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[list[str]]:
    """Commands of every ```bash block, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [[line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
            for block in blocks]


README_COMMANDS = [line for block in bash_blocks(README) for line in block if line.startswith("dyconv-deploy ")]
COMMANDS = sorted(README_COMMANDS, key=lambda command: not command.startswith("dyconv-deploy build-plugin"))
NEEDS_GPU = re.compile(r"#.*needs-gpu$")


def missing_gpu_tools(command: str) -> str | None:
    """What a ``needs-gpu`` command lacks here: a CUDA device, TensorRT, nvcc or the TensorRT tree it names."""
    import torch

    from dyconv_deploy.errors import DyconvError
    from dyconv_deploy.trt.plugin import find_nvcc

    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not importable"
    try:
        find_nvcc()
    except DyconvError:
        return "nvcc not found"
    root = re.search(r"--tensorrt-root (\S+)", command)
    if root and not Path(root.group(1)).is_dir():
        return f"no TensorRT tree at {root.group(1)}"
    return None


def check_inspect_table(out: str, workdir: Path) -> None:
    count = int(re.search(r"(\d+) dynamic conv\(s\)", out).group(1))
    assert count > 0 and len(re.findall(r"^│ \S+ +│ dynamic_conv +│ 4 │", out, flags=re.M)) == count
    for role in ("attention", "aggregation", "convolution", "other", "total", "paper: Chen et al., CVPR 2020"):
        assert re.search(rf"^│ {re.escape(role)} +│ [\d.]+[KM]? +│ [\d.]+[KM]? +│$", out, flags=re.M), role


def check_inspect_json(out: str, workdir: Path) -> None:
    from dyconv_deploy.samples import create_sample

    report = json.loads(out)
    assert [layer["family"] for layer in report["layers"]] == ["dynamic_conv", "condconv", "odconv", "dynet"]
    assert report["total"]["params"] == sum(p.numel() for p in create_sample("tiny_dynamic").parameters())


def check_bench(out: str, workdir: Path) -> None:
    result = json.loads((workdir / "bench.json").read_text())
    assert (result["model"], result["twin"], result["backend"]) == ("sample:tiny_dynamic", "sample:tiny_dynamic_static",
                                                                   "ort-cpu")
    assert {"versions", "cpu", "torch_threads", "gpu"} <= result["environment"].keys()
    rows = result["results"]
    strategies = ("plugin", "experts", "grouped", "static")
    assert {(row["strategy"], row["batch"]) for row in rows} == {(s, b) for s in strategies for b in (1, 8)}, result
    for row in rows:
        for stats in (row["dynamic"], row["static"]):
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] and stats["throughput"] > 0
            assert stats["iterations"] == 10
        assert row["ratio_p50"] == pytest.approx(row["dynamic"]["p50_ms"] / row["static"]["p50_ms"])
    assert (workdir / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "p50" in out


def check_bench_openvino_profile(out: str, workdir: Path) -> None:
    result = json.loads((workdir / "bench-openvino.json").read_text())
    assert result["backend"] == "openvino" and result["settings"]["profile"] is True
    for row in result["results"]:
        assert set(row["profile"]["categories"]) == {"attention", "mixing", "convolution", "other"}
        if row["strategy"] != "static":
            assert row["profile"]["categories"]["mixing"] > 0 and row["profile"]["categories"]["attention"] > 0
        assert row["static_profile"]["categories"]["mixing"] == 0
    assert "where the time goes on openvino" in out


def check_triton_repo(out: str, workdir: Path) -> None:
    folder = workdir / "model_repository" / "dy_mobilenetv2"
    config = (folder / "config.pbtxt").read_text()
    for line in ('name: "dy_mobilenetv2"', 'backend: "onnxruntime"', "max_batch_size: 32",
                 "preferred_batch_size: [ 8, 16 ]"):
        assert line in config, config
    served = onnx.load(str(folder / "1" / "model.onnx"))
    assert {node.domain for node in served.graph.node} <= {"", "ai.onnx"}  # contract nodes expanded for Triton's ORT
    assert "tritonserver" in (folder / "README.md").read_text()


CHECKS = {
    "dyconv-deploy inspect sample:dy_mobilenetv2": check_inspect_table,
    "dyconv-deploy inspect sample:tiny_dynamic --json": check_inspect_json,
    "dyconv-deploy bench sample:tiny_dynamic --batch 1,8 --iterations 10 --json bench.json --plot bench.png":
        check_bench,
    "dyconv-deploy bench sample:tiny_dynamic --backend openvino --batch 1,8 --iterations 10 --profile --json "
    "bench-openvino.json": check_bench_openvino_profile,
    "dyconv-deploy triton-repo dy_mobilenetv2.onnx -o model_repository --name dy_mobilenetv2 --max-batch 32 "
    "--preferred-batch 8,16": check_triton_repo,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def test_test_command_matches_ci():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    (block,) = [block for block in bash_blocks(README) if any("pytest" in line for line in block)]
    install, test = block
    assert install in ci, f"README install line {install!r} is not in .ci/run"
    assert any(line.startswith(test) for line in ci), f".ci/run does not run {test!r}"


def test_readme_has_commands():
    assert README_COMMANDS[0] == "dyconv-deploy demo"  # the main job, end to end
    assert CHECKS.keys() <= {" ".join(command.split()) for command in COMMANDS}, "a checked command left the README"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(command.split()) for command in COMMANDS])
def test_readme_command_works(command, workdir):
    if NEEDS_GPU.search(command) and (missing := missing_gpu_tools(command)):
        pytest.skip(f"marked '# needs-gpu' in the README: {missing}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DYCONV_DEPLOY_CACHE": str(workdir / "cache")}
    process = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, f"{command}\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}"
    check = CHECKS.get(" ".join(command.split()))
    if check:
        check(process.stdout, workdir)
