// Torch extension over plugins/kernels: the CUDA implementation behind dyconv::dynamic_conv2d.
// Built on demand by dyconv_deploy/ops/cuda.py (torch.utils.cpp_extension.load) together with
// plugins/kernels/dynamic_conv.cu; registered from Python with torch.library.register_kernel.
#include "dynamic_conv.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

namespace
{

void checkOperand(torch::Tensor const& t, torch::Tensor const& x, char const* name, int64_t rank)
{
    TORCH_CHECK(t.device() == x.device(), "dyconv: ", name, " is on ", t.device(), " but x is on ", x.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "dyconv: ", name, " is ", t.scalar_type(), " but x is ",
        x.scalar_type());
    TORCH_CHECK(rank < 0 || t.dim() == rank, "dyconv: ", name, " must have rank ", rank, ", got ", t.dim());
}

int32_t narrow(int64_t v)
{
    TORCH_CHECK(v >= INT32_MIN && v <= INT32_MAX, "dyconv: size or attribute ", v, " does not fit the kernels' int32");
    return static_cast<int32_t>(v);
}

bool hasShape(torch::Tensor const& t, std::vector<int64_t> const& shape)
{
    return t.sizes().vec() == shape;
}

//! The operands read by the kernels have the contract's shapes (the kernels index them unchecked):
//! attention [N, K] or [N, K, M], bias [K, M], spatial [N, kH, kW]; dyconv_deploy/ops/cuda.py checks the same.
void checkOperandShapes(torch::Tensor const& x, torch::Tensor const& attention, torch::Tensor const& weight,
    std::optional<torch::Tensor> const& bias, std::optional<torch::Tensor> const& spatial)
{
    int64_t const n = x.size(0);
    int64_t const k = weight.size(0);
    int64_t const m = weight.size(1);
    bool const attention_ok = hasShape(attention, {n, k}) || hasShape(attention, {n, k, m});
    TORCH_CHECK(attention_ok, "dyconv: attention has shape ", attention.sizes(), ", expected [", n, ", ", k, "] or [",
        n, ", ", k, ", ", m, "] for x ", x.sizes(), " and weight ", weight.sizes());
    bool const bias_ok = !bias || hasShape(*bias, {k, m});
    TORCH_CHECK(bias_ok, "dyconv: bias has shape ", bias->sizes(), ", expected [", k, ", ", m, "] for weight ",
        weight.sizes());
    bool const spatial_ok = !spatial || hasShape(*spatial, {n, weight.size(3), weight.size(4)});
    TORCH_CHECK(spatial_ok, "dyconv: spatial has shape ", spatial->sizes(), ", expected [", n, ", ", weight.size(3),
        ", ", weight.size(4), "] for x ", x.sizes(), " and weight ", weight.sizes());
}

dyconv::ConvShape convShape(torch::Tensor const& x, torch::Tensor const& attention, torch::Tensor const& weight,
    std::vector<int64_t> const& stride, std::vector<int64_t> const& padding, std::vector<int64_t> const& dilation,
    int64_t groups, dyconv::Algo algo)
{
    TORCH_CHECK(stride.size() == 2 && dilation.size() == 2 && padding.size() == 4,
        "dyconv: stride and dilation need 2 values, padding 4 (top, left, bottom, right)");
    dyconv::ConvShape s{};
    s.n = narrow(x.size(0));
    s.c = narrow(x.size(1));
    s.h = narrow(x.size(2));
    s.w = narrow(x.size(3));
    s.experts = narrow(weight.size(0));
    s.m = narrow(weight.size(1));
    s.kh = narrow(weight.size(3));
    s.kw = narrow(weight.size(4));
    s.groups = narrow(groups);
    s.stride_h = narrow(stride[0]);
    s.stride_w = narrow(stride[1]);
    s.pad_top = narrow(padding[0]);
    s.pad_left = narrow(padding[1]);
    s.pad_bottom = narrow(padding[2]);
    s.pad_right = narrow(padding[3]);
    s.dilation_h = narrow(dilation[0]);
    s.dilation_w = narrow(dilation[1]);
    s.channel_attention = attention.dim() == 3;
    s = dyconv::conv_shape(s);
    TORCH_CHECK(weight.size(2) * groups == x.size(1), "dyconv: weight expects ", weight.size(2), " x ", groups,
        " input channels, x has ", x.size(1));
    TORCH_CHECK(dyconv::validate(s, algo) == cudaSuccess, "dyconv: shapes not supported (", dyconv::algo_name(algo),
        "): x ", x.sizes(), ", weight ", weight.sizes(), ", groups ", groups,
        " (C and M divisible by groups, output size positive, launch grid within CUDA's limits; "
        "tensor-core-experts: at most 64 experts)");
    return s;
}

//! Y [N, M, Ho, Wo] per the dyconv::DynamicConv2d contract; `algo` is a dyconv::Algo value (0 = heuristic).
torch::Tensor dynamicConv2d(torch::Tensor x, torch::Tensor attention, torch::Tensor weight,
    std::optional<torch::Tensor> bias, std::optional<torch::Tensor> spatial, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups, int64_t algo)
{
    TORCH_CHECK(x.is_cuda(), "dyconv: the CUDA kernels need CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kHalf,
        "dyconv: x must be float32 or float16, got ", x.scalar_type());
    checkOperand(x, x, "x", 4);
    checkOperand(attention, x, "attention", -1);
    checkOperand(weight, x, "weight", 5);
    if (bias)
    {
        checkOperand(*bias, x, "bias", 2);
    }
    if (spatial)
    {
        checkOperand(*spatial, x, "spatial", 3);
    }
    TORCH_CHECK(dyconv::is_algo(algo), "dyconv: unknown kernel path ", algo, " (not a dyconv::Algo value)");
    checkOperandShapes(x, attention, weight, bias, spatial);
    c10::cuda::CUDAGuard const guard(x.device());
    // After the guard: the WMMA paths are available or not on x's device (algo_available asks the current one).
    TORCH_CHECK(dyconv::algo_available(static_cast<dyconv::Algo>(algo)), "dyconv: kernel path ",
        dyconv::algo_name(static_cast<dyconv::Algo>(algo)),
        dyconv::needs_sm80(static_cast<dyconv::Algo>(algo))
            ? " needs a GPU of compute capability 8.0 or later (A100, H100) and the extension compiled for it "
              "(TORCH_CUDA_ARCH_LIST with 8.0+); x is on a GPU it cannot run on"
            : " is not compiled into this build (no cuBLAS was found when it was built: set CUBLAS_ROOT or pip "
              "install nvidia-cublas, then rebuild)");
    auto const chosen = static_cast<dyconv::Algo>(algo);
    dyconv::ConvShape const shape = convShape(x, attention, weight, stride, padding, dilation, groups, chosen);

    torch::Tensor const xc = x.contiguous();
    torch::Tensor const ac = attention.contiguous();
    torch::Tensor const wc = weight.contiguous();
    std::optional<torch::Tensor> const bc = bias ? std::optional<torch::Tensor>(bias->contiguous()) : std::nullopt;
    std::optional<torch::Tensor> const sc
        = spatial ? std::optional<torch::Tensor>(spatial->contiguous()) : std::nullopt;
    torch::Tensor y = torch::empty({shape.n, shape.m, shape.ho, shape.wo}, x.options());

    size_t const bytes = dyconv::workspace_size(shape, chosen);
    torch::Tensor workspace = torch::empty({static_cast<int64_t>(bytes)}, x.options().dtype(torch::kUInt8));
    dyconv::ConvTensors const tensors{xc.data_ptr(), ac.data_ptr(), wc.data_ptr(), bc ? bc->data_ptr() : nullptr,
        sc ? sc->data_ptr() : nullptr, y.data_ptr()};
    dyconv::DType const dtype = x.scalar_type() == torch::kHalf ? dyconv::DType::kFloat16 : dyconv::DType::kFloat32;
    cudaError_t const status = dyconv::dynamic_conv2d(shape, dtype, tensors, bytes > 0 ? workspace.data_ptr() : nullptr,
        bytes, c10::cuda::getCurrentCUDAStream(), chosen);
    TORCH_CHECK(status == cudaSuccess, "dyconv::dynamic_conv2d (", dyconv::algo_name(chosen), ") failed: ",
        cudaGetErrorString(status));
    return y;
}

//! Name of the path the heuristic picks for these shapes ("depthwise", "gemm-fused", "gemm-aggregated").
std::string selectAlgo(torch::Tensor x, torch::Tensor attention, torch::Tensor weight, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups)
{
    checkOperand(x, x, "x", 4);
    checkOperand(attention, x, "attention", -1);
    checkOperand(weight, x, "weight", 5);
    checkOperandShapes(x, attention, weight, std::nullopt, std::nullopt);
    dyconv::ConvShape const shape
        = convShape(x, attention, weight, stride, padding, dilation, groups, dyconv::Algo::kAuto);
    return dyconv::algo_name(dyconv::select_algo(shape));
}

//! Names of the dyconv::Algo values this build has and the current device can run (kAuto excluded):
//! the tensor-core-* (WMMA) paths only on sm_80 or later with code compiled for it.
std::vector<std::string> availableAlgos()
{
    std::vector<std::string> names;
    for (int64_t value = 1; dyconv::is_algo(value); ++value)
    {
        if (dyconv::algo_available(static_cast<dyconv::Algo>(value)))
        {
            names.emplace_back(dyconv::algo_name(static_cast<dyconv::Algo>(value)));
        }
    }
    return names;
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("dynamic_conv2d", &dynamicConv2d, "dyconv::DynamicConv2d on CUDA tensors", py::arg("x"),
        py::arg("attention"), py::arg("weight"), py::arg("bias"), py::arg("spatial"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("algo") = 0);
    m.def("select_algo", &selectAlgo, "the per-shape heuristic's choice", py::arg("x"), py::arg("attention"),
        py::arg("weight"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"));
    m.def("available_algos", &availableAlgos, "the kernel paths of this build that the current GPU runs");
}
