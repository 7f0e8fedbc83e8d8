"""``plugins/kernels`` run on the CPU under a host emulation of CUDA, checked against the reference.

The kernel source is compiled with g++ after rewriting each launch to ``emu::launch`` (see
``cuda_emulation.h``): blocks run sequentially, a block's threads as std::threads. This checks
index arithmetic, tiling, padding and path selection of every path on a CPU-only machine; the
same configs run on a real device in ``test_kernels_cuda.py``. Every launch plan runs in fp32 and
fp16, on a workspace and an output filled with garbage; fp16 results must meet the ``fp16-kernel``
tolerance, which a simulated kernel accumulating in fp16 is shown to miss. The cuBLAS path calls
the CPU reference GEMM of ``emulated_cublas/cublas_v2.h`` (TF32 rounding included), so its GEMM
parameters (transposes, leading dimensions, strides, batch count, compute type) are checked by the
same comparison, under the ``tensor-core-kernel`` tolerance. The WMMA paths (``tensor-core-fused``,
``-aggregated``, ``-experts``) run on the emulated WMMA of ``cuda_emulation.h``, which checks the API's rules
(alignment, ldm, whole warps, the same arguments on every lane) and runs warps in turns between barriers, so a
missing ``__syncthreads`` reads or overwrites a tile another warp has not written or read yet.
"""

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dyconv_deploy.ops import per_sample_dynamic_conv2d
from dyconv_deploy.tolerance import TOLERANCES, compare
from layer_configs import KERNEL_CONFIGS, LAYER_CONFIGS, LayerConfig

HERE = Path(__file__).resolve().parent
KERNEL_SOURCE = HERE.parents[1] / "plugins" / "kernels" / "dynamic_conv.cu"
ALGOS = {"auto": 0, "depthwise": 1, "gemm-fused": 2, "gemm-aggregated": 3, "cublas-pointwise": 4,
         "tensor-core-fused": 5, "tensor-core-aggregated": 6, "tensor-core-experts": 7}
DTYPES = {"fp32": (0, np.float32), "fp16": (1, np.float16)}
KERNEL_TOLERANCES = {"fp32": TOLERANCES["fp32"], "fp16": TOLERANCES["fp16-kernel"]}  # fp16: fp32 accumulation
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_SUPPORTED = 801
WORKSPACE_OVERRUN = -1  # emulated_entry.cpp: a write past the workspace given
MISUSE = -2  # emulated_entry.cpp: an emulated API used against its rules (emu_misuse says which)
GEMM_TILE = 16  # kGemmBK: reduction tile
MIN_SPLIT_STEPS = 4  # kMinStepsPerSplit
LAUNCHES = ("tiles64", "tiles32", "split-k")
WMMA_ALGOS = ("tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts")  # need sm_80
TENSOR_CORE_ALGOS = ("cublas-pointwise", *WMMA_ALGOS)
MMA_TILE = 64  # kMmaTile: weight rows x pixels of a WMMA block
MMA_REDUCTION_TILE = 32  # kMmaBK: reduction tile of a WMMA block
MMA_WIDE_COLUMNS = 128  # kMmaWideColumns: pixels of a tensor-core-fused block on planes over 64 pixels


class ConvShape(ctypes.Structure):
    """Mirror of ``dyconv::ConvShape``."""

    _fields_ = [(name, ctypes.c_int32) for name in (
        "n", "c", "h", "w", "experts", "m", "kh", "kw", "groups", "stride_h", "stride_w", "pad_top", "pad_left",
        "pad_bottom", "pad_right", "dilation_h", "dilation_w")] + [
        ("channel_attention", ctypes.c_bool), ("ho", ctypes.c_int32), ("wo", ctypes.c_int32)]


def conv_shape(config: LayerConfig, batch: int) -> ConvShape:
    ho, wo = config.output_hw
    return ConvShape(batch, config.c, config.h, config.w, config.experts, config.m, config.kernel, config.kernel,
                     config.groups, *config.stride, *config.padding, *config.dilation, config.channel_attention,
                     ho, wo)


def emulated_source(source: str) -> str:
    """Rewrite ``k<<<grid, block, shared, stream>>>(args);`` launches and ``extern __shared__`` arrays."""
    source = re.sub(r"extern __shared__ float (\w+)\[\];", r"float* \1 = ::emu::dynamic_shared<float>();", source)
    source, launches = re.subn(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);",
                               r"::emu::launch(\2, [=] { \1(\3); });", source)
    assert launches > 0, "no kernel launch found to emulate"
    return source


def cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> ctypes.CDLL:
    include = cuda_include()
    if shutil.which("g++") is None or include is None:
        pytest.skip("emulating the kernels needs g++ and the CUDA headers (cuda_fp16.h under CUDA_HOME)")
    build = tmp_path_factory.mktemp("emulated_kernels")
    (build / "dynamic_conv_emulated.inc").write_text(emulated_source(KERNEL_SOURCE.read_text()))
    library = build / "emulated_kernels.so"
    # cuBLAS is the CPU reference of emulated_cublas/cublas_v2.h, so the cuBLAS path is emulated too.
    subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-DDYCONV_WITH_CUBLAS=1",
                    f"-I{HERE / 'emulated_cublas'}", f"-I{include}", f"-I{KERNEL_SOURCE.parent}", f"-I{HERE}",
                    f"-I{build}", str(HERE / "emulated_entry.cpp"), "-o", str(library)],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(library))
    lib.emu_workspace_size.restype = ctypes.c_size_t
    lib.emu_blas_gemm_calls.restype = ctypes.c_longlong
    lib.emu_gemm_splits.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    lib.emu_misuse.restype = ctypes.c_char_p
    return lib


def run_emulated(lib: ctypes.CDLL, config: LayerConfig, inputs: dict, dtype: str, algo: str | int,
                 multiprocessor_count: int = 1, block_order_seed: int = 0,
                 workspace_bytes: int = -1) -> tuple[int, np.ndarray]:
    """(cudaError_t, Y) of the emulated kernels on float ``inputs``; ``algo`` is a name or a raw ``Algo`` value.

    The emulated GPU has ``multiprocessor_count`` multiprocessors and runs blocks in the order drawn with
    ``block_order_seed`` (0: linear); the workspace has ``workspace_bytes`` (-1: ``workspace_size``'s), then a
    guard: a write into the guard returns WORKSPACE_OVERRUN. Y starts as NaN, so an output the kernels do not
    write fails the comparison.
    """
    code, np_dtype = DTYPES[dtype]
    arrays = {k: None if v is None else np.ascontiguousarray(v.numpy(), dtype=np_dtype) for k, v in inputs.items()}
    shape = conv_shape(config, inputs["x"].shape[0])
    y = np.full((shape.n, config.m, shape.ho, shape.wo), np.nan, dtype=np_dtype)
    pointers = [None if a is None else a.ctypes.data_as(ctypes.c_void_p) for a in arrays.values()]
    status = lib.emu_dynamic_conv2d(ctypes.byref(shape), code, *pointers, y.ctypes.data_as(ctypes.c_void_p),
                                    ALGOS.get(algo, algo), multiprocessor_count, block_order_seed,
                                    ctypes.c_longlong(workspace_bytes))
    return status, y


def reference(config: LayerConfig, inputs: dict, np_dtype) -> torch.Tensor:
    """The naive per-sample loop in float64 on inputs rounded to the kernel's element type."""
    rounded = {k: None if v is None else torch.from_numpy(v.numpy().astype(np_dtype).astype(np.float64))
               for k, v in inputs.items()}
    return per_sample_dynamic_conv2d(**rounded, **config.conv_kwargs())


def gemm_blocks(config: LayerConfig, batch: int, tile: int) -> int:
    ho, wo = config.output_hw
    return -(-ho * wo // tile) * -(-(config.m // config.groups) // tile) * batch * config.groups


def multiprocessor_count_for(launch: str, config: LayerConfig, batch: int) -> int | None:
    """A multiprocessor count that makes the GEMM launcher pick ``launch`` (None: impossible here).

    64x64 tiles need >= 2 blocks per SM; 32x32 tiles are used when 64x64 give fewer but 32x32 enough;
    split-K when even 32x32 give fewer and the reduction has >= 2 slices of 4 tiles.
    """
    if launch == "tiles64":
        return 1
    if launch == "tiles32":
        count = gemm_blocks(config, batch, 32) // 2
        return count if 2 * count > gemm_blocks(config, batch, 64) else None
    return 1 << 20 if -(-config.reduction // GEMM_TILE) >= 2 * MIN_SPLIT_STEPS else None


def algos_for(config: LayerConfig) -> list[str]:
    """Every path that applies (``auto`` runs once per config; the heuristic has its own test)."""
    return (["gemm-fused", "gemm-aggregated", *WMMA_ALGOS] + (["depthwise"] if config.depthwise else [])
            + (["cublas-pointwise"] if config.pointwise else []))


def tolerance_for(algo: str, precision: str):
    """Tensor-core paths (TF32, or fp16 per-sample kernels): ``tensor-core-kernel``; the rest KERNEL_TOLERANCES."""
    return TOLERANCES["tensor-core-kernel"] if algo in TENSOR_CORE_ALGOS else KERNEL_TOLERANCES[precision]


BATCH = 3
PLANS = [(config, algo, launch) for config in KERNEL_CONFIGS for algo in algos_for(config)
         for launch in (LAUNCHES if algo.startswith("gemm") else ["tiles64"])
         if multiprocessor_count_for(launch, config, BATCH) is not None]
CASES = [pytest.param(config, algo, launch, precision, id=f"{config.name}-{algo}-{launch}-{precision}")
         for config, algo, launch in PLANS + [(config, "auto", "tiles64") for config in KERNEL_CONFIGS]
         for precision in DTYPES]


@pytest.mark.parametrize("config, algo, launch, precision", CASES)
def test_emulated_kernels_match_reference(emulated, config, algo, launch, precision):
    inputs = config.inputs(batch=BATCH, generator=torch.Generator().manual_seed(0))
    count = multiprocessor_count_for(launch, config, BATCH)
    if launch == "split-k":
        assert splits(emulated, conv_shape(config, BATCH), count) > 1
    gemm_calls = emulated.emu_blas_gemm_calls()
    status, y = run_emulated(emulated, config, inputs, precision, algo, count)
    assert status == 0, emulated.emu_misuse().decode()
    assert emulated.emu_blas_gemm_calls() - gemm_calls == (algo == "cublas-pointwise")
    result = compare(y, reference(config, inputs, DTYPES[precision][1]), tolerance_for(algo, precision))
    assert result.passed, str(result)


FP16_BATCH = 2
DEEP_CONFIGS = [config for config in LAYER_CONFIGS if config.reduction >= 1000]


def fp16_accumulated(config: LayerConfig, inputs: dict) -> np.ndarray:
    """Y of a kernel that rounds every product and partial sum to fp16 (dense, per-expert attention, bias)."""
    assert config.groups == 1 and not config.channel_attention and not config.spatial and config.bias
    half = {k: torch.from_numpy(v.numpy().astype(np.float16)).double() for k, v in inputs.items() if v is not None}
    weights = torch.einsum("nk,kmr->nmr", half["attention"], half["weight"].flatten(2)).numpy().astype(np.float16)
    bias = (half["attention"] @ half["bias"]).numpy().astype(np.float16)
    top, left, bottom, right = config.padding
    x = torch.nn.functional.pad(half["x"], (left, right, top, bottom))
    columns = torch.nn.functional.unfold(x, config.kernel, dilation=config.dilation, stride=config.stride)
    columns = columns.numpy().astype(np.float16)
    acc = np.zeros((x.shape[0], config.m, columns.shape[2]), np.float16)
    for r in range(config.reduction):
        acc += weights[:, :, r, None] * columns[:, None, r, :]
    return (acc + bias[:, :, None]).reshape(x.shape[0], config.m, *config.output_hw)


@pytest.mark.parametrize("config", DEEP_CONFIGS, ids=lambda c: c.name)
def test_fp16_kernel_tolerance_rejects_fp16_accumulation(config):
    # Needs no compiler: the tolerance the kernels must meet is checked against both kinds of accumulation.
    inputs = config.inputs(batch=FP16_BATCH, generator=torch.Generator().manual_seed(1))
    expected = reference(config, inputs, np.float16)
    fp32_accumulated = expected.numpy().astype(np.float16)  # exact sums, rounded once to the fp16 output
    assert compare(fp32_accumulated, expected, TOLERANCES["fp16-kernel"]).passed
    result = compare(fp16_accumulated(config, inputs), expected, TOLERANCES["fp16-kernel"])
    assert result.required_atol > 10 * TOLERANCES["fp16-kernel"].atol, str(result)


@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=lambda c: c.name)
def test_heuristic_picks_documented_path(emulated, config):
    ho, wo = config.output_hw
    expected = "depthwise" if config.depthwise else "gemm-fused" if ho * wo <= 256 else "gemm-aggregated"
    assert emulated.emu_select_algo(ctypes.byref(conv_shape(config, 1))) == ALGOS[expected]


@pytest.mark.parametrize("algo, config", [
    ("depthwise", LAYER_CONFIGS[0]),  # a dense conv
    ("cublas-pointwise", next(c for c in LAYER_CONFIGS if c.name == "pointwise-stride2")),
    ("cublas-pointwise", next(c for c in LAYER_CONFIGS if c.name == "3x3")),
], ids=lambda v: v.name if isinstance(v, LayerConfig) else v)
def test_a_path_rejects_a_shape_it_does_not_apply_to(emulated, algo, config):
    inputs = config.inputs(batch=1, generator=torch.Generator().manual_seed(2))
    status, _ = run_emulated(emulated, config, inputs, "fp32", algo)
    assert status == CUDA_ERROR_INVALID_VALUE


@pytest.mark.parametrize("algo", [-1, len(ALGOS)])
def test_unknown_path_is_an_error(emulated, algo):
    config = LAYER_CONFIGS[0]
    inputs = config.inputs(batch=1, generator=torch.Generator().manual_seed(2))
    status, _ = run_emulated(emulated, config, inputs, "fp32", algo)
    assert status == CUDA_ERROR_INVALID_VALUE


def mma_tiles(config: LayerConfig, channels: int = MMA_TILE, columns: int = MMA_TILE) -> tuple[int, int]:
    """WMMA blocks per (sample, group): (output-channel tiles of ``channels``, pixel tiles of ``columns``)."""
    ho, wo = config.output_hw
    return -(-(config.m // config.groups) // channels), -(-ho * wo // columns)


def test_tensor_core_configs_reach_past_one_tile():
    """KERNEL_CONFIGS run the WMMA paths on more than one 64-tile of output channels and of pixels (both at once in
    a grouped conv), reductions that are not whole 16-tiles or 32-tiles (the zero-filled tail) past one 32-tile,
    and BATCH samples, each with its own attention; tensor-core-experts (floor(64 / K) channels per tile) also on
    several channel tiles with K that does not divide 64 (an unused last row), with DyNet attention and with
    ODConv's spatial attention."""
    assert any(mma_tiles(c)[0] > 1 for c in KERNEL_CONFIGS) and any(mma_tiles(c)[1] > 1 for c in KERNEL_CONFIGS)
    assert any(min(mma_tiles(c)) > 1 and c.groups > 1 for c in KERNEL_CONFIGS)
    assert any(c.reduction % GEMM_TILE for c in KERNEL_CONFIGS) and BATCH > 1
    assert any(c.reduction > MMA_REDUCTION_TILE and c.reduction % MMA_REDUCTION_TILE for c in KERNEL_CONFIGS)
    # tensor-core-fused's 128-column blocks (planes over 64 pixels): several, the last partial, pointwise and kxk;
    # and a plane of exactly 64 pixels, which keeps the 64-column block.
    def wide(c):
        return c.output_hw[0] * c.output_hw[1] > MMA_TILE

    for pointwise in (True, False):
        assert any(wide(c) and c.pointwise == pointwise and mma_tiles(c, columns=MMA_WIDE_COLUMNS)[1] > 1
                   and c.output_hw[0] * c.output_hw[1] % MMA_WIDE_COLUMNS for c in KERNEL_CONFIGS)
    assert any(c.output_hw[0] * c.output_hw[1] == MMA_TILE for c in KERNEL_CONFIGS)
    experts_tiles = {c.name: mma_tiles(c, MMA_TILE // c.experts)[0] for c in KERNEL_CONFIGS}
    assert any(experts_tiles[c.name] > 1 and MMA_TILE % c.experts for c in KERNEL_CONFIGS)
    assert any(experts_tiles[c.name] > 1 and c.channel_attention for c in KERNEL_CONFIGS)
    # Its column tiles run over the batch's pixels: some start in one sample and end in the next, with ODConv's
    # S, DyNet's attention and a bias each differing per sample.
    def spans_samples(c):
        ho, wo = c.output_hw
        return any(q // (ho * wo) != (q + MMA_TILE - 1) // (ho * wo) for q in range(0, BATCH * ho * wo, MMA_TILE))
    assert any(spans_samples(c) and c.spatial and not c.depthwise for c in KERNEL_CONFIGS)
    assert any(spans_samples(c) and c.channel_attention and c.bias for c in KERNEL_CONFIGS)


def depthwise_planes_per_block(config: LayerConfig) -> int:
    """Mirror of the kernels' depthwise_planes_per_block: 1 from 256 pixels on, else 8 warps / warps per plane,
    capped by 2048 floats of taps."""
    ho, wo = config.output_hw
    if ho * wo >= 256:
        return 1
    return max(1, min(8 // -(-ho * wo // 32), 2048 // config.kernel ** 2))


def test_depthwise_configs_cover_every_block_layout():
    """Small planes several per block (one warp each, and several warps each) with a last block only partly
    filled with channels, and a plane split over two blocks."""
    layouts = [(depthwise_planes_per_block(c), c.m % depthwise_planes_per_block(c), c.output_hw)
               for c in KERNEL_CONFIGS if c.depthwise]
    assert any(planes == 8 and partial for planes, partial, _ in layouts)
    assert any(1 < planes < 8 for planes, _, _ in layouts)
    assert any(planes == 1 and ho * wo > 256 for planes, _, (ho, wo) in layouts)


@pytest.mark.parametrize("algo", WMMA_ALGOS)
@pytest.mark.parametrize("device, code", [(75, 75), (86, 75), (70, 90)],
                         ids=["sm75", "sm86-running-sm75-code", "sm70"])
def test_tensor_core_path_is_refused_where_it_cannot_run(emulated, device, code, algo):
    """Below sm_80, or with code compiled for an older architecture (its kernel is empty), a WMMA path is not
    available and a call is refused with cudaErrorNotSupported, Y unwritten; the other paths still run."""
    config = next(c for c in LAYER_CONFIGS if c.name == "3x3")
    inputs = config.inputs(batch=2, generator=torch.Generator().manual_seed(6))
    emulated.emu_set_architecture(device, code)
    try:
        available = emulated.emu_algo_available(ALGOS[algo])
        status, y = run_emulated(emulated, config, inputs, "fp32", algo)
        other, _ = run_emulated(emulated, config, inputs, "fp32", "gemm-fused")
    finally:
        emulated.emu_set_architecture(90, 90)
    assert not available and status == CUDA_ERROR_NOT_SUPPORTED and np.isnan(y).all()
    assert other == 0


@pytest.mark.parametrize("algo, workspace", [("tensor-core-fused", False), ("tensor-core-experts", False),
                                             ("tensor-core-aggregated", True)])
def test_tensor_core_paths_run_on_sm80_with_their_workspace(emulated, algo, workspace):
    """On sm_80 the WMMA paths run; only tensor-core-aggregated needs a workspace (the per-sample kernels), and
    refuses less."""
    config = next(c for c in LAYER_CONFIGS if c.name == "3x3-deep-dynet")
    batch = 2
    inputs = config.inputs(batch=batch, generator=torch.Generator().manual_seed(7))
    kernels = batch * config.m * config.reduction * 4
    size = emulated.emu_workspace_size(ctypes.byref(conv_shape(config, batch)), ALGOS[algo], 1, 1)
    assert size == (-(-kernels // 256) * 256 if workspace else 0)
    emulated.emu_set_architecture(80, 80)
    try:
        available = emulated.emu_algo_available(ALGOS[algo])
        status, y = run_emulated(emulated, config, inputs, "fp16", algo, workspace_bytes=size)
        short, _ = run_emulated(emulated, config, inputs, "fp16", algo, workspace_bytes=size - 4) if workspace \
            else (CUDA_ERROR_INVALID_VALUE, None)
    finally:
        emulated.emu_set_architecture(90, 90)
    assert available and status == 0, emulated.emu_misuse().decode()
    assert short == CUDA_ERROR_INVALID_VALUE
    assert compare(y, reference(config, inputs, np.float16), TOLERANCES["tensor-core-kernel"]).passed


def test_tensor_core_paths_index_their_columns_in_int(emulated):
    """The WMMA paths number their columns in int, a block's width (up to 128) past the last included: Ho*Wo (per
    sample) and, for tensor-core-experts, N*Ho*Wo (the whole batch) at most 2^31 - 129."""
    limit = 2**31 - 1 - MMA_WIDE_COLUMNS
    columns = pointwise(2, 1, limit)  # one row of `limit` pixels
    for algo in ("tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts"):
        assert emulated.emu_validate_algo(ctypes.byref(conv_shape(columns, 1)), ALGOS[algo]) == 0, algo
        wider = pointwise(2, 1, limit + 1)
        assert emulated.emu_validate_algo(ctypes.byref(conv_shape(wider, 1)), ALGOS[algo]) \
            == CUDA_ERROR_INVALID_VALUE, algo
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(wider, 1)), ALGOS["gemm-fused"]) == 0
    # The experts path's columns run over the batch: 2^21 pixels a plane, 1023 samples fit, 1024 do not.
    config = pointwise(2, 2048, 1024)
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(config, 1023)), ALGOS["tensor-core-experts"]) == 0
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(config, 1024)), ALGOS["tensor-core-experts"]) \
        == CUDA_ERROR_INVALID_VALUE
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(config, 1024)), ALGOS["tensor-core-fused"]) == 0
    samples = pointwise(2, 1, 1)  # one pixel a sample: N*Ho*Wo = N
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(samples, limit)), ALGOS["tensor-core-experts"]) == 0
    assert emulated.emu_validate_algo(ctypes.byref(conv_shape(samples, limit + 1)), ALGOS["tensor-core-experts"]) \
        == CUDA_ERROR_INVALID_VALUE


def test_experts_path_needs_every_expert_of_a_channel_in_one_tile(emulated):
    """tensor-core-experts keeps a channel's K expert rows in one 64-row tile: K = 64 runs, K = 65 is refused."""
    for experts, expected in ((64, 0), (65, CUDA_ERROR_INVALID_VALUE)):
        config = LayerConfig(f"pointwise-{experts}-experts", c=4, m=3, experts=experts, kernel=1, h=3, w=3)
        inputs = config.inputs(batch=2, generator=torch.Generator().manual_seed(8))
        assert (emulated.emu_validate_algo(ctypes.byref(conv_shape(config, 2)), ALGOS["tensor-core-experts"]) == 0) \
            == (experts <= MMA_TILE)
        status, y = run_emulated(emulated, config, inputs, "fp32", "tensor-core-experts")
        assert status == expected, emulated.emu_misuse().decode()
        if expected == 0:
            assert compare(y, reference(config, inputs, np.float32), TOLERANCES["tensor-core-kernel"]).passed


@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=lambda c: c.name)
def test_fused_tensor_core_blocks_are_as_wide_as_the_cost_model_counts(emulated, config):
    """tensor-core-fused launches 2 threads per column of blocks ``fused_column_tile`` wide (128 on planes over 64
    pixels), ceil(Ho*Wo / width) of them per (sample, group): what the cost model counts its MMAs and re-mixing by."""
    from dyconv_deploy.ops.cuda_cost import LayerShape, fused_column_tile

    ho, wo = config.output_hw
    width = fused_column_tile(LayerShape(BATCH, config.c, config.h, config.w, config.m, config.groups, config.kernel,
                                         config.kernel, ho, wo, config.experts))
    assert width == (MMA_WIDE_COLUMNS if ho * wo > MMA_TILE else MMA_TILE)
    inputs = config.inputs(batch=BATCH, generator=torch.Generator().manual_seed(3))
    status, _ = run_emulated(emulated, config, inputs, "fp16", "tensor-core-fused")
    assert status == 0
    dims = (ctypes.c_uint * 6)()
    emulated.emu_last_launch(dims)
    assert list(dims) == [-(-ho * wo // width) * BATCH * config.groups, mma_tiles(config)[0], 1, 2 * width, 1, 1]


def splits(lib: ctypes.CDLL, shape: ConvShape, multiprocessor_count: int, partial_floats: int = 2**62) -> int:
    """The split-K factor plan_gemm picks on that GPU with that much split-K buffer (default: unbounded)."""
    return lib.emu_gemm_splits(ctypes.byref(shape), multiprocessor_count, partial_floats)


def slices(config: LayerConfig, split: int) -> int:
    """Split-K slices of ``split``: ceil(steps / ceil(steps / split)) (fewer when they do not divide)."""
    steps = -(-config.reduction // GEMM_TILE)
    return -(-steps // -(-steps // split))


# Reductions of >= 3 slices: two partial sums add in the same order either way (a + b == b + a).
DETERMINISM_CONFIGS = [c for c in KERNEL_CONFIGS if c.reduction >= 3 * MIN_SPLIT_STEPS * GEMM_TILE]


@pytest.mark.parametrize("algo", ["gemm-fused", "gemm-aggregated"])
@pytest.mark.parametrize("config", DETERMINISM_CONFIGS, ids=lambda c: c.name)
def test_split_k_is_bitwise_deterministic_under_any_block_order(emulated, config, algo):
    """A GPU runs split-K slices in no fixed order: the result must not depend on it (torch.equal across runs)."""
    inputs = config.inputs(batch=2, generator=torch.Generator().manual_seed(4))
    assert splits(emulated, conv_shape(config, 2), 1 << 20) >= 3
    runs = [run_emulated(emulated, config, inputs, "fp32", algo, 1 << 20, block_order_seed=seed)
            for seed in (0, 1, 2)]
    assert all(status == 0 for status, _ in runs)
    assert all(np.array_equal(runs[0][1], y) for _, y in runs[1:])


@pytest.mark.parametrize("algo", ["gemm-fused", "gemm-aggregated"])
def test_a_workspace_sized_on_a_small_gpu_serves_a_large_one(emulated, algo):
    """A TensorRT engine sizes the workspace on the build GPU (a MIG slice) and runs on another (a full GPU): the
    kernels split only as far as the bytes given hold, never write past them, and refuse less than the kernels."""
    config = next(c for c in LAYER_CONFIGS if c.name == "pointwise-1024-deep")  # 64 reduction tiles
    batch = 8  # 1024 outputs: 16 slices need 4x the split-K buffer of one multiprocessor
    shape = conv_shape(config, batch)
    inputs = config.inputs(batch=batch, generator=torch.Generator().manual_seed(5))
    expected = reference(config, inputs, np.float32)
    small = emulated.emu_workspace_size(ctypes.byref(shape), ALGOS[algo], 1, 1 << 20)
    large = emulated.emu_workspace_size(ctypes.byref(shape), ALGOS[algo], 1 << 20, 1)
    required = batch * config.m * config.reduction * 4 if algo == "gemm-aggregated" else 0  # per-sample kernels
    assert required < small < large
    for given in (required, small, large):
        status, y = run_emulated(emulated, config, inputs, "fp32", algo, 1 << 20, workspace_bytes=given)
        assert status == 0, (given, status)
        assert compare(y, expected, KERNEL_TOLERANCES["fp32"]).passed
    if required:
        status, _ = run_emulated(emulated, config, inputs, "fp32", algo, 1 << 20, workspace_bytes=required - 4)
        assert status == CUDA_ERROR_INVALID_VALUE


def test_split_k_takes_as_many_slices_as_the_buffer_holds(emulated):
    config = next(c for c in LAYER_CONFIGS if c.name == "pointwise-1024-deep")  # 64 tiles: up to 16 slices
    shape = conv_shape(config, 1)
    outputs = config.m * config.h * config.w
    assert splits(emulated, shape, 1 << 20) == 16
    for floats in (16 * outputs, 16 * outputs - 1, 5 * outputs, 2 * outputs - 1, 0):
        split = splits(emulated, shape, 1 << 20, floats)
        assert split == 1 or slices(config, split) * outputs <= floats, (floats, split)
        assert split == 16 or slices(config, split + 1) * outputs > floats, (floats, split)  # the most that fit
    assert splits(emulated, shape, 1 << 20, 2 * outputs - 1) == 1


def test_workspace_size_holds_every_split_plan_of_its_gpu(emulated):
    """For every batch up to the size's, the plan of the GPU it was sized for fits it (monotone in N)."""
    for config in LAYER_CONFIGS:
        for count in (1, 16, 132):
            largest = conv_shape(config, 64)
            size = emulated.emu_workspace_size(ctypes.byref(largest), ALGOS["gemm-fused"], count, 1)
            for batch in (1, 2, 7, 64):
                split = splits(emulated, conv_shape(config, batch), count)
                needed = (slices(config, split) if split > 1 else 0) * batch * config.m * int(np.prod(config.output_hw))
                assert needed * 4 <= size, (config.name, count, batch)


def test_empty_batch_is_a_no_op(emulated):
    config = LAYER_CONFIGS[2]
    inputs = config.inputs(batch=0, generator=torch.Generator().manual_seed(3))
    status, y = run_emulated(emulated, config, inputs, "fp32", "auto")
    assert status == 0 and y.size == 0


GRID_X_LIMIT = 2**31 - 1


def depthwise(channels: int, size: int) -> LayerConfig:
    return LayerConfig(f"dw{channels}", c=channels, m=channels, experts=4, kernel=3, h=size, w=size,
                       padding=(1, 1, 1, 1), groups=channels)


def pointwise(m: int, h: int, w: int) -> LayerConfig:
    return LayerConfig(f"pw{m}", c=2, m=m, experts=2, kernel=1, h=h, w=w)


@pytest.mark.parametrize("config, batch, fits", [
    # DY-MobileNetV2's depthwise layers at batch 256: N * groups * Ho * Wo is far beyond 2^31, the grid is not.
    (depthwise(960, 7), 256, True),
    (depthwise(1280, 112), 256, True),
    # Depthwise grid (ceil(Ho*Wo / 256) * N, ceil(M / planes per block)): exact at both limits; one plane per block
    # from 256 pixels on, eight of one pixel, two of 100 pixels (four warps each).
    (depthwise(65535, 16), 1, True),
    (depthwise(65536, 16), 1, False),
    (depthwise(8 * 65535, 1), 1, True),
    (depthwise(8 * 65535 + 1, 1), 1, False),
    (depthwise(2 * 65535, 10), 1, True),
    (depthwise(2 * 65535 + 1, 10), 1, False),
    (depthwise(4, 16), GRID_X_LIMIT, True),  # one pixel block per plane
    (depthwise(4, 17), (GRID_X_LIMIT + 1) // 2 - 1, True),  # 289 pixels: two blocks per plane
    (depthwise(4, 17), (GRID_X_LIMIT + 1) // 2, False),
    # GEMM grid (ceil(Ho*Wo / 32) * N * G, ceil(M/G / 32)), 32x32 tiles: 2^16 pixel tiles per plane.
    (pointwise(2, 2048, 1024), 2**15 - 1, True),
    (pointwise(2, 2048, 1024), 2**15, False),
    (pointwise(70000, 1, 1), 1, True),  # y = 2188 output-channel tiles
], ids=lambda v: v.name if isinstance(v, LayerConfig) else str(v))
def test_grid_limit_check_is_exact(emulated, config, batch, fits):
    assert (emulated.emu_validate(ctypes.byref(conv_shape(config, batch))) == 0) == fits
