// C entry points of the host-emulated kernels (see cuda_emulation.h); `dynamic_conv_emulated.inc` is
// plugins/kernels/dynamic_conv.cu with its launches rewritten by test_kernels_emulated.py.
#include "cuda_emulation.h"

#include "dynamic_conv_emulated.inc"

constexpr size_t kGuardBytes = 1 << 16;
constexpr int kWorkspaceOverrun = -1;
constexpr int kMisuse = -2; // an emulated API used against its rules (emu::misuse, see emu_misuse)

// One call on a GPU of `multiprocessor_count` multiprocessors that schedules blocks in the order of
// `block_order_seed` (0: linear), with `workspace_bytes` of workspace (< 0: workspace_size's for this GPU).
extern "C" int emu_dynamic_conv2d(dyconv::ConvShape const* shape, int dtype, void const* x, void const* attention,
    void const* weight, void const* bias, void const* spatial, void* y, int algo, int multiprocessor_count,
    unsigned block_order_seed, long long workspace_bytes)
{
    emu::multiprocessor_count = multiprocessor_count;
    emu::block_order_seed = block_order_seed;
    emu::misuse.clear();
    size_t const bytes = workspace_bytes >= 0 ? static_cast<size_t>(workspace_bytes)
                                              : dyconv::workspace_size(*shape, static_cast<dyconv::Algo>(algo));
    // Garbage, as a real allocator's memory: every path must initialise what it reads back. A guard of the same
    // garbage follows the bytes given; a write into it is reported as kWorkspaceOverrun.
    std::vector<unsigned char> workspace(bytes + kGuardBytes, 0xC3);
    dyconv::ConvTensors const tensors{x, attention, weight, bias, spatial, y};
    int const status = dyconv::dynamic_conv2d(*shape, static_cast<dyconv::DType>(dtype), tensors,
        bytes > 0 ? workspace.data() : nullptr, bytes, nullptr, static_cast<dyconv::Algo>(algo));
    bool const guard_intact
        = std::all_of(workspace.begin() + bytes, workspace.end(), [](unsigned char b) { return b == 0xC3; });
    return !guard_intact ? kWorkspaceOverrun : !emu::misuse.empty() ? kMisuse : status;
}

// What the last emu_dynamic_conv2d returning kMisuse found ("" when nothing).
extern "C" char const* emu_misuse()
{
    return emu::misuse.c_str();
}

// The emulated GPU's compute capability and the architecture its kernels were compiled for (x 10: 90 is sm_90).
extern "C" void emu_set_architecture(int compute_capability, int code_architecture)
{
    emu::compute_capability = compute_capability;
    emu::code_architecture = code_architecture;
}

extern "C" int emu_algo_available(int algo)
{
    return dyconv::algo_available(static_cast<dyconv::Algo>(algo));
}

extern "C" int emu_select_algo(dyconv::ConvShape const* shape)
{
    return static_cast<int>(dyconv::select_algo(*shape));
}

extern "C" int emu_validate(dyconv::ConvShape const* shape)
{
    return static_cast<int>(dyconv::validate(*shape));
}

// The split-K factor of the GEMM plan on a GPU of `multiprocessor_count` with `partial_floats` of split-K buffer.
extern "C" int emu_gemm_splits(dyconv::ConvShape const* shape, int multiprocessor_count, size_t partial_floats)
{
    emu::multiprocessor_count = multiprocessor_count;
    return dyconv::plan_gemm(*shape, partial_floats).splits;
}

// workspace_size for a GPU of `sized_for` multiprocessors, asked on one of `multiprocessor_count`.
extern "C" size_t emu_workspace_size(dyconv::ConvShape const* shape, int algo, int sized_for, int multiprocessor_count)
{
    emu::multiprocessor_count = multiprocessor_count;
    return dyconv::workspace_size(*shape, static_cast<dyconv::Algo>(algo), sized_for);
}

// cuBLAS GEMMs computed so far (emulated_cublas/cublas_v2.h).
extern "C" long long emu_blas_gemm_calls()
{
    return emu_blas::gemm_calls;
}

extern "C" int emu_validate_algo(dyconv::ConvShape const* shape, int algo)
{
    return static_cast<int>(dyconv::validate(*shape, static_cast<dyconv::Algo>(algo)));
}

// The grid and block of the last emulated launch: {grid x, y, z, block x, y, z}.
extern "C" void emu_last_launch(unsigned* dims)
{
    unsigned const values[6] = {emu::grid_dim.x, emu::grid_dim.y, emu::grid_dim.z, emu::block_dim.x,
        emu::block_dim.y, emu::block_dim.z};
    std::copy(values, values + 6, dims);
}
