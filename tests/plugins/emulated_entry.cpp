// C entry points of the host-emulated kernels (see cuda_emulation.h); `dynamic_conv_emulated.inc` is
// plugins/kernels/dynamic_conv.cu with its launches rewritten by test_kernels_emulated.py.
#include "cuda_emulation.h"

#include "dynamic_conv_emulated.inc"

extern "C" int emu_dynamic_conv2d(dyconv::ConvShape const* shape, int dtype, void const* x, void const* attention,
    void const* weight, void const* bias, void const* spatial, void* y, int algo, int multiprocessor_count)
{
    emu::multiprocessor_count = multiprocessor_count;
    size_t const bytes = dyconv::workspace_size(*shape, static_cast<dyconv::Algo>(algo));
    // Garbage, as a real allocator's memory: every path must initialise what it reads back.
    std::vector<unsigned char> workspace(bytes, 0xC3);
    dyconv::ConvTensors const tensors{x, attention, weight, bias, spatial, y};
    return dyconv::dynamic_conv2d(*shape, static_cast<dyconv::DType>(dtype), tensors,
        bytes > 0 ? workspace.data() : nullptr, bytes, nullptr, static_cast<dyconv::Algo>(algo));
}

extern "C" int emu_select_algo(dyconv::ConvShape const* shape)
{
    return static_cast<int>(dyconv::select_algo(*shape));
}

extern "C" int emu_validate(dyconv::ConvShape const* shape)
{
    return static_cast<int>(dyconv::validate(*shape));
}

extern "C" int emu_gemm_splits(dyconv::ConvShape const* shape, int multiprocessor_count)
{
    emu::multiprocessor_count = multiprocessor_count;
    return dyconv::plan_gemm(*shape).splits;
}

extern "C" size_t emu_workspace_size(dyconv::ConvShape const* shape, int algo, int multiprocessor_count)
{
    emu::multiprocessor_count = multiprocessor_count;
    return dyconv::workspace_size(*shape, static_cast<dyconv::Algo>(algo));
}
