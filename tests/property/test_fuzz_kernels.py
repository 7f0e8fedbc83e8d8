"""Property: the CUDA kernels of ``plugins/kernels``, run under the host emulation of ``tests/plugins``, agree
with the per-sample loop on random layer cases (any plane, square or not; sizes beyond one kernel tile too).

Each example draws one run of the case (:func:`kernel_runs`): a path that applies (``algos_for``) under a
launch plan the case allows (64x64 or 32x32 tiles, split-K), in fp32 against the float64 loop (``fp32``
tolerance) or in fp16 (``fp16-kernel`` tolerance, on the same fp16-rounded inputs); tensor-core paths under
``tensor-core-kernel`` (``tolerance_for``). The inputs are ``LayerConfig.inputs``: samples and their
attentions differ.
"""

import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from test_kernels_emulated import emulated  # noqa: F401  (the module-scoped fixture: one build per module)
from test_kernels_emulated import (DTYPES, GEMM_TILE, LAUNCHES, algos_for, gemm_blocks, multiprocessor_count_for,
                                   reference, run_emulated, tolerance_for)

from dyconv_deploy.tolerance import compare
from fuzz_cases import FuzzCase, fuzz_cases

# The emulation runs a std::thread per CUDA thread and a std::barrier per __syncthreads(): a run costs about
# one round of 256 threads per 64x64 GEMM tile and reduction step (smaller tiles and split-K divide the same
# work), or per depthwise block (one per sample and output channel). Cases up to this many rounds are run.
MAX_ROUNDS = 48


def emulation_rounds(config, batch: int) -> int:
    gemm = gemm_blocks(config, batch, 64) * -(-config.reduction // GEMM_TILE)
    return max(gemm, batch * config.m) if config.depthwise else gemm


def kernel_runs(config, batch: int):
    """``(precision, algo, launch, multiprocessor count)`` of every emulated run of a case."""
    for algo in algos_for(config):
        for launch in LAUNCHES if algo.startswith("gemm") else LAUNCHES[:1]:
            count = multiprocessor_count_for(launch, config, batch)
            if count is not None:
                yield from ((precision, algo, launch, count) for precision in DTYPES)


# An emulated run of a wide case costs ~10 layer examples (a std::thread per CUDA thread): a sixth as many.
@settings(max_examples=max(1, settings().max_examples // 6))
@given(case=fuzz_cases(wide=True), data=st.data())
def test_emulated_kernels_agree_with_per_sample_loop(emulated, case: FuzzCase, data):  # noqa: F811
    config = case.kernel_config()
    assume(emulation_rounds(config, case.batch) <= MAX_ROUNDS)
    precision, algo, launch, count = data.draw(st.sampled_from(list(kernel_runs(config, case.batch))), label="run")
    event(f"{precision} {algo} {launch}")
    inputs = config.inputs(batch=case.batch, generator=torch.Generator().manual_seed(case.seed))
    status, y = run_emulated(emulated, config, inputs, precision, algo, count)
    assert status == 0, f"the kernels returned cudaError {status}"
    comparison = compare(y, reference(config, inputs, DTYPES[precision][1]), tolerance_for(algo, precision),
                         name=f"{algo} {launch}")
    assert comparison.passed, str(comparison)
