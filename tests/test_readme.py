"""The README's command blocks work as written.

Every command in a ```bash block that starts with ``dyconv-deploy `` (continuation lines
ending in ``\\`` joined) must exit 0. They run in README order through bash, in one shared
temporary directory (so a command may use a file an earlier one wrote, and the graph cache is
there too), with this interpreter's scripts first on PATH. A command whose trailing comment ends in ``needs-gpu``
(``# needs-gpu``, or ``# TensorRT backend; needs-gpu``) is skipped here: it needs a CUDA
device or TensorRT. The block with the test command must match what ``.ci/run`` runs.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[list[str]]:
    """Commands of every ```bash block, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [[line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
            for block in blocks]


COMMANDS = [line for block in bash_blocks(README) for line in block if line.startswith("dyconv-deploy ")]
NEEDS_GPU = re.compile(r"#.*needs-gpu$")


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
    assert COMMANDS[0] == "dyconv-deploy demo"  # the main job, end to end


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_exits_0(command, workdir):
    if NEEDS_GPU.search(command):
        pytest.skip("marked '# needs-gpu' in the README (needs a CUDA device or TensorRT)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DYCONV_DEPLOY_CACHE": str(workdir / "cache")}
    process = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, f"{command}\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}"
