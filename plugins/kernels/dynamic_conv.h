// Dynamic convolution kernels for dyconv::DynamicConv2d (contract version 1).
//
//   X [N, C, H, W]   A [N, K] or [N, K, M]   W [K, M, C/G, kH, kW]   B [K, M] (optional)
//   S [N, kH, kW] (optional)                 Y [N, M, Ho, Wo]
//   Y[n] = conv2d(X[n], (sum_k A[n,k] W[k]) * S[n], sum_k A[n,k] B[k])
//
// All tensors are dense NCHW and share one element type (float32 or float16); every path
// accumulates in float32. Pure CUDA: no TensorRT or torch types, every launcher takes a stream
// and returns a cudaError_t.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

namespace dyconv
{

enum class DType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! Convolution path; kAuto applies select_algo() (the per-shape heuristic).
enum class Algo : int32_t
{
    kAuto = 0,
    kDepthwise = 1,      //!< direct kernel, taps mixed once per plane, small planes several per block; C/G == 1
    kGemmFused = 2,      //!< implicit GEMM that mixes the experts while loading weight tiles (no workspace)
    kGemmAggregated = 3, //!< aggregate per-sample kernels into the workspace, then implicit GEMM over them
    //! Per-sample kernels aggregated in the input type into the workspace, then one cuBLAS strided-batched GEMM
    //! over (sample, group) on tensor cores: TF32 for float32 (10-bit mantissas: not float32 accuracy), float16
    //! inputs with float32 accumulation. Needs a 1x1 / stride 1 / unpadded conv and a build with cuBLAS.
    kCublasPointwise = 4,
    //! The fused implicit GEMM (kGemmFused) on tensor cores with WMMA, any conv, no workspace, no split-K: weight
    //! tiles mixed in fp32, then stored as TF32 (float32 inputs, X rounded too: 10-bit mantissas, not float32
    //! accuracy) or half; 16x16 MMAs with fp32 accumulators, 64x64 tiles (64x128 on planes over 64 pixels, so
    //! that each sample's weights are mixed ceil(Ho*Wo / 128) times, not ceil(Ho*Wo / 64)). Needs a GPU of
    //! compute capability 8.0 or
    //! later (A100, H100) and code compiled for one (see algo_available). Never chosen by kAuto.
    kTensorCoreFused = 5,
    //! kGemmAggregated on tensor cores: per-sample kernels aggregated into the workspace in the input type, then
    //! the WMMA implicit GEMM of kTensorCoreFused reads them (each weight mixed once per sample, not once per
    //! 64-pixel tile). Any conv; the accuracy, GPU and build needs of kTensorCoreFused. Never chosen by kAuto.
    kTensorCoreAggregated = 6,
    //! The experts GEMM with the mix in the epilogue: one WMMA implicit GEMM of the unmixed experts, K rows per
    //! output channel (floor(64 / K) channels per 64-row tile; X scaled by S per tap), its 64-column tiles
    //! running over the (sample, pixel) columns of the whole batch, then Y = sum_k A[n,k(,m)] Yk + mixed bias
    //! from the fp32 accumulators. K times the conv's FLOPs but constant weights, no per-sample kernels and full
    //! tiles on small planes: for late layers and large batches. Needs K <= 64 and N*Ho*Wo < 2^31; the accuracy,
    //! GPU and build needs of kTensorCoreFused; no workspace. Never chosen by kAuto.
    kTensorCoreExperts = 7,
};

//! True for the values of Algo (a raw integer from a binding or a serialized plugin may be anything).
constexpr bool is_algo(int64_t value)
{
    return value >= static_cast<int64_t>(Algo::kAuto) && value <= static_cast<int64_t>(Algo::kTensorCoreExperts);
}

//! The WMMA paths (kTensorCoreFused, kTensorCoreAggregated, kTensorCoreExperts), which need an sm_80+ GPU.
constexpr bool needs_sm80(Algo algo)
{
    return algo == Algo::kTensorCoreFused || algo == Algo::kTensorCoreAggregated || algo == Algo::kTensorCoreExperts;
}

//! False for an Algo value this build of the kernels left out (kCublasPointwise without DYCONV_WITH_CUBLAS), for
//! the WMMA paths (needs_sm80) when the current device is below sm_80 or the code loaded for it was compiled for
//! an older architecture (a build for sm_75 only, or compute_7x PTX JIT-compiled), and for a value outside Algo.
//! Queries the current device for the WMMA paths only.
bool algo_available(Algo algo);

//! Shapes and convolution attributes of one call; see conv_shape() to fill the derived sizes.
struct ConvShape
{
    int32_t n, c, h, w;     //!< input X
    int32_t experts;        //!< K
    int32_t m;              //!< output channels
    int32_t kh, kw;         //!< kernel size
    int32_t groups;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t dilation_h, dilation_w;
    bool channel_attention; //!< A is [N, K, M] (DyNet) rather than [N, K]
    int32_t ho, wo;         //!< output size, derived
};

//! Device pointers of one call; bias and spatial may be null.
struct ConvTensors
{
    void const* x;
    void const* attention;
    void const* weight;
    void const* bias;
    void const* spatial;
    void* y;
};

//! Output extent along one axis (<= 0 when the kernel does not fit).
inline int32_t conv_output_size(int32_t size, int32_t pad_begin, int32_t pad_end, int32_t kernel, int32_t stride,
    int32_t dilation)
{
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride + 1;
}

//! Fills ho/wo from the other fields.
inline ConvShape conv_shape(ConvShape s)
{
    s.ho = conv_output_size(s.h, s.pad_top, s.pad_bottom, s.kh, s.stride_h, s.dilation_h);
    s.wo = conv_output_size(s.w, s.pad_left, s.pad_right, s.kw, s.stride_w, s.dilation_w);
    return s;
}

//! Whether `algo` computes convs of this shape, availability (algo_available) aside: kDepthwise needs C/G == 1,
//! kCublasPointwise a 1x1 / stride 1 / unpadded conv, kTensorCoreExperts K <= 64; the others (and kAuto) take
//! any. False outside Algo.
bool algo_applies(ConvShape const& shape, Algo algo);

//! cudaSuccess when the shape is consistent (positive sizes, C and M divisible by groups, Ho, Wo > 0), one output
//! plane and one kernel have < 2^31 elements, and the launch grid of `algo` (kAuto: select_algo's) fits CUDA's
//! limits (x < 2^31, y <= 65535): depthwise (ceil(Ho*Wo / 256) * N, ceil(M / planes)), planes per block 1 for
//! planes of >= 256 pixels, else floor(8 / ceil(Ho*Wo / 32)) capped at floor(2048 / (kH*kW)) (at least 1);
//! SIMT GEMM (ceil(Ho*Wo / 32) * N * G, ceil(M/G / 32)), its plan with the most blocks; WMMA paths
//! (ceil(Ho*Wo / B) * N * G, ceil(M/G / 64)), B = 128 for kTensorCoreFused on planes over 64 pixels, else 64,
//! refused for Ho*Wo > 2^31 - 129; kTensorCoreExperts (ceil(N*Ho*Wo / 64) * G, ceil(M/G / floor(64 / K))),
//! refused for K > 64 or N*Ho*Wo > 2^31 - 129. `algo` must be an Algo value (is_algo).
cudaError_t validate(ConvShape const& shape, Algo algo = Algo::kAuto);

//! The per-shape heuristic (independent of the batch size, so workspace sizes stay monotone in N):
//! C/G == 1 -> kDepthwise; Ho*Wo <= kFusedMaxPixels -> kGemmFused; otherwise kGemmAggregated.
Algo select_algo(ConvShape const& shape);

//! Largest output plane for which the fused GEMM is chosen: up to this size every weight tile is
//! mixed at most a few times per sample, and the per-sample kernels never go to global memory.
constexpr int32_t kFusedMaxPixels = 256;

//! Workspace bytes for `algo` on a GPU of `multiprocessors` multiprocessors (0: the current device's): 0 for
//! kDepthwise, kTensorCoreFused and kTensorCoreExperts; N*M*(C/G)*kH*kW floats of per-sample kernels for
//! kGemmAggregated, kCublasPointwise and kTensorCoreAggregated (required), and for both SIMT implicit-GEMM paths
//! the split-K buffer of the largest split plan on that GPU: slices * N*M*Ho*Wo floats, at most 4096 per
//! multiprocessor (16 KiB), none when the reduction is too short to split. Monotone in N, so a size computed for
//! the largest batch serves every smaller one. On another GPU (an engine built on a MIG slice, run on a full
//! GPU) the kernels split only as far as the bytes given hold (see dynamic_conv2d).
size_t workspace_size(ConvShape const& shape, Algo algo = Algo::kAuto, int32_t multiprocessors = 0);

//! Y for one call. `workspace` holds `workspace_bytes` (may be null when that is 0): at least the required part
//! of workspace_size (the per-sample kernels of the aggregating paths); a split-K plan whose slices do not fit in the
//! rest is refused for one with fewer slices (down to none), so a smaller workspace costs speed, never memory
//! safety. Split-K slices are added in a fixed order: the same inputs, GPU and workspace size give bitwise the
//! same Y on every run. Returns cudaErrorInvalidValue for an inconsistent shape, an `algo` outside Algo, a path
//! that does not apply or a workspace below the required part, cudaErrorNotSupported for an algorithm this build
//! left out or the current GPU cannot run (see algo_available); Y is then not written. An empty batch is a no-op.
cudaError_t dynamic_conv2d(ConvShape const& shape, DType dtype, ConvTensors const& tensors, void* workspace,
    size_t workspace_bytes, cudaStream_t stream, Algo algo = Algo::kAuto);

//! Per-sample kernels (sum_k A[n,k] W[k]) * S[n] as float32 [N, M, C/G, kH, kW] into `kernels`.
cudaError_t aggregate_kernels(
    ConvShape const& shape, DType dtype, ConvTensors const& tensors, float* kernels, cudaStream_t stream);

//! Human-readable name of an algorithm ("depthwise", "gemm-fused", ...).
char const* algo_name(Algo algo);

} // namespace dyconv
