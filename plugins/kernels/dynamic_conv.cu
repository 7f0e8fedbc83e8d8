// Kernels of dynamic_conv.h. Three convolution paths share one weight-mixing device function:
//   depthwise        C/G == 1: a block per (sample, output channel), or per several output channels of a
//                    sample when their planes are small, mixes each plane's kH*kW taps once into shared
//                    memory, then each thread computes one output pixel directly.
//   gemm (fused)     implicit GEMM per (sample, group): Y[m, p] = sum_r Wn[m, r] * im2col(X)[r, p]; weight
//                    tiles are mixed from the K experts while being loaded, so Wn never reaches global memory.
//   gemm (aggregated) the same GEMM reading Wn from a workspace filled by aggregate_kernel first; cheaper when
//                    one sample's output plane spans many pixel tiles (each tile would re-mix the weights).
// A 1x1 / stride-1 / unpadded conv is the GEMM's pointwise specialisation, i.e. a batched GEMM over
// (sample, group). Tensor cores (sm_80 and later), one WMMA implicit GEMM (tensor_core_kernel) whose weight
// rows are, by path (TensorCoreRows):
//   tensor-core fused      mixed in fp32 registers while loaded (no workspace);
//   tensor-core aggregated read from per-sample kernels aggregate_kernel wrote in the input type;
//   tensor-core experts    the K unmixed experts of each output channel (K x the FLOPs, constant weights, so a
//                          tile's 64 columns run over the whole batch's pixels), the attention-weighted sum
//                          over K taken from the fp32 accumulators in the epilogue;
// stored to shared memory as TF32 (float32 inputs) or half, 16x16 MMAs with fp32 accumulators; and, built with
// cuBLAS (DYCONV_WITH_CUBLAS), for pointwise convs
//   cublas pointwise  per-sample kernels aggregated in the input type, then one cublasGemmStridedBatchedEx
//                    over (sample, group): TF32 for float32, float16 inputs with float32 accumulation.
// Bias mixing (K multiply-adds per output channel) is fused into every epilogue but cuBLAS's, before which a
// bias kernel writes Y (the GEMM adds to it, beta = 1).
// When even 32x32 tiles leave the GPU mostly idle (batch 1, late layers), the SIMT GEMM also splits its
// reduction over blockIdx.z: slice z stores its float32 partial sums into its own workspace buffer, and a
// second kernel adds the slices in a fixed order, so results are bitwise the same from run to run.
#include "dynamic_conv.h"

#include <cuda_fp16.h>
#include <mma.h>
#ifndef DYCONV_WITH_CUBLAS
#define DYCONV_WITH_CUBLAS 0
#endif
#if DYCONV_WITH_CUBLAS
#include <cublas_v2.h>
#endif

#include <algorithm>
#include <type_traits>
#if DYCONV_WITH_CUBLAS
#include <unordered_map>
#endif

namespace dyconv
{
namespace
{

constexpr int kGemmBK = 16;    // reduction tile
constexpr int kGemmThreadM = 4; // outputs per thread along M
constexpr int kGemmThreadN = 4; // outputs per thread along pixels
constexpr int kDepthwiseThreads = 256;
constexpr int kAggregateThreads = 256;
constexpr int kMinStepsPerSplit = 4; // reduction tiles per split-K slice, at least
constexpr int kMaxSplits = 16;
// Split-K partial sums (slices x outputs) never exceed this many floats per multiprocessor: a split happens only
// below target = 2 blocks of 32x32 outputs per multiprocessor, with splits <= ceil(target / blocks) and
// outputs <= blocks * 32 * 32, so slices * outputs < (target + blocks) * 32 * 32 < 2 * target * 32 * 32.
constexpr long long kSplitKFloatsPerMultiprocessor = 4LL * 32 * 32;
constexpr size_t kWorkspaceAlignment = 256;
constexpr int kLargeTile = 64; // GEMM tile (outputs x pixels) when the grid fills the GPU
constexpr int kSmallTile = 32; // GEMM tile of small grids, the plan with the most blocks
constexpr long long kMaxGridX = (1LL << 31) - 1;
constexpr long long kMaxGridYZ = 65535;

__device__ __forceinline__ float load(float const* p, size_t i)
{
    return __ldg(p + i);
}

__device__ __forceinline__ float load(__half const* p, size_t i)
{
    return __half2float(__ldg(p + i));
}

__device__ __forceinline__ void store(float* p, size_t i, float v)
{
    p[i] = v;
}

__device__ __forceinline__ void store(__half* p, size_t i, float v)
{
    p[i] = __float2half_rn(v);
}

template <typename T>
struct Typed
{
    T const* x;
    T const* attention;
    T const* weight;
    T const* bias;
    T const* spatial;
    T* y;
};

template <typename T>
Typed<T> typed(ConvTensors const& t)
{
    return {static_cast<T const*>(t.x), static_cast<T const*>(t.attention), static_cast<T const*>(t.weight),
        static_cast<T const*>(t.bias), static_cast<T const*>(t.spatial), static_cast<T*>(t.y)};
}

template <typename T>
__device__ __forceinline__ float attention_at(ConvShape const& s, T const* a, int n, int k, int gm)
{
    size_t const nk = static_cast<size_t>(n) * s.experts + k;
    return load(a, s.channel_attention ? nk * s.m + gm : nk);
}

// sum_k A[n, k(, gm)] W[k, gm, r]: element r of sample n's mixed kernel for output channel gm, before S.
template <typename T>
__device__ __forceinline__ float mix_experts(ConvShape const& s, Typed<T> const& t, int n, int gm, int r,
    int kernel_size)
{
    float v = 0.f;
    for (int k = 0; k < s.experts; ++k)
    {
        v += attention_at(s, t.attention, n, k, gm)
            * load(t.weight, (static_cast<size_t>(k) * s.m + gm) * kernel_size + r);
    }
    return v;
}

// Element r of sample n's mixed kernel for output channel gm: (sum_k A W[k, gm, r]) * S[n, r mod kH*kW].
template <typename T>
__device__ float mixed_weight(ConvShape const& s, Typed<T> const& t, int n, int gm, int r, int kernel_size)
{
    float v = mix_experts(s, t, n, gm, r, kernel_size);
    if (t.spatial != nullptr)
    {
        int const taps = s.kh * s.kw;
        v *= load(t.spatial, static_cast<size_t>(n) * taps + r % taps);
    }
    return v;
}

template <typename T>
__device__ float mixed_bias(ConvShape const& s, Typed<T> const& t, int n, int gm)
{
    float v = 0.f;
    if (t.bias != nullptr)
    {
        for (int k = 0; k < s.experts; ++k)
        {
            v += attention_at(s, t.attention, n, k, gm) * load(t.bias, static_cast<size_t>(k) * s.m + gm);
        }
    }
    return v;
}

// im2col(X[n, group])[r, p] with zero padding; xg points at the group's first input channel.
template <typename T>
__device__ __forceinline__ float im2col(ConvShape const& s, T const* xg, int r, int p)
{
    int const taps = s.kh * s.kw;
    int const c = r / taps;
    int const tap = r - c * taps;
    int const i = tap / s.kw;
    int const j = tap - i * s.kw;
    int const oh = p / s.wo;
    int const ow = p - oh * s.wo;
    int const ih = oh * s.stride_h - s.pad_top + i * s.dilation_h;
    int const iw = ow * s.stride_w - s.pad_left + j * s.dilation_w;
    if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w)
    {
        return 0.f;
    }
    return load(xg, (static_cast<size_t>(c) * s.h + ih) * s.w + iw);
}

// The tile a GEMM block works on, from its position in a grid (pixel tiles * N * G, M/G tiles, ...) of
// tile_m x tile_p output tiles: sample n, group g, the tile's first output channel in the group (m0) and pixel
// (p0), the per-group sizes, and xg, the group's first input channel of X[n].
template <typename T>
struct GemmBlock
{
    int cg, mg, kernel_size, pixels, n, g, m0, p0;
    T const* xg;

    __device__ GemmBlock(ConvShape const& s, T const* x, int tile_m, int tile_p)
        : cg(s.c / s.groups)
        , mg(s.m / s.groups)
        , kernel_size(cg * s.kh * s.kw)
        , pixels(s.ho * s.wo)
    {
        int const pixel_tiles = (pixels + tile_p - 1) / tile_p;
        int const sample_group = blockIdx.x / pixel_tiles; // n * groups + g
        n = sample_group / s.groups;
        g = sample_group - n * s.groups;
        m0 = blockIdx.y * tile_m;
        p0 = (blockIdx.x - sample_group * pixel_tiles) * tile_p;
        xg = x + (static_cast<size_t>(n) * s.c + static_cast<size_t>(g) * cg) * s.h * s.w;
    }

    // im2col(X[n, g])[r, p], 0 for r >= r_end or a pixel past Ho*Wo (kPointwise: X itself, 1x1/stride 1/unpadded).
    template <bool kPointwise>
    __device__ float x_at(ConvShape const& s, int r, int p, int r_end) const
    {
        if (r >= r_end || p >= pixels)
        {
            return 0.f;
        }
        return kPointwise ? load(xg, static_cast<size_t>(r) * pixels + p) : im2col(s, xg, r, p);
    }
};

// kernels[n, gm, r] = mixed_weight(n, gm, r), [N, M, C/G*kH*kW] in K (float32, or the GEMM's input type).
template <typename T, typename K>
__global__ void aggregate_kernel(ConvShape s, Typed<T> t, K* kernels)
{
    int const kernel_size = (s.c / s.groups) * s.kh * s.kw;
    size_t const total = static_cast<size_t>(s.n) * s.m * kernel_size;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
    {
        int const r = static_cast<int>(i % kernel_size);
        size_t const nm = i / kernel_size;
        store(kernels, i, mixed_weight(s, t, static_cast<int>(nm / s.m), static_cast<int>(nm % s.m), r, kernel_size));
    }
}

// Output planes of one depthwise block: one when a plane needs all kDepthwiseThreads threads (its pixel blocks
// then split it), else as many whole-warp slots of ceil(Ho*Wo / 32) warps as the block holds (up to 8 planes of
// <= 32 pixels: a 7x7 plane leaves 15 of 64 threads idle, not 207 of 256), and no more than keep the planes'
// mixed taps within kDepthwiseSharedFloats.
constexpr int kDepthwiseSharedFloats = 2048;

__host__ __device__ inline int depthwise_planes_per_block(ConvShape const& s)
{
    int const pixels = s.ho * s.wo;
    if (pixels >= kDepthwiseThreads)
    {
        return 1;
    }
    int const planes = (kDepthwiseThreads / 32) / ((pixels + 31) / 32);
    int const fit = kDepthwiseSharedFloats / (s.kh * s.kw);
    return fit < 1 ? 1 : planes < fit ? planes : fit;
}

// grid (pixel blocks * N, ceil(M / planes)) with planes = depthwise_planes_per_block: slot q of the block (its
// threadIdx.x / slot threads) computes output channel blockIdx.y * planes + q; dynamic shared memory: planes *
// kH*kW floats, each plane's taps mixed once.
template <typename T>
__global__ void __launch_bounds__(kDepthwiseThreads) depthwise_kernel(ConvShape s, Typed<T> t)
{
    extern __shared__ float taps[];
    __shared__ float bias[kDepthwiseThreads / 32];
    int const pixels = s.ho * s.wo;
    int const planes = depthwise_planes_per_block(s);
    int const slot_threads = planes == 1 ? kDepthwiseThreads : (pixels + 31) / 32 * 32;
    int const pixel_blocks = (pixels + kDepthwiseThreads - 1) / kDepthwiseThreads; // 1 when planes > 1
    int const n = blockIdx.x / pixel_blocks;
    int const first = blockIdx.y * planes; // output channel of slot 0
    int const ntaps = s.kh * s.kw;
    for (int e = threadIdx.x; e < planes * ntaps; e += blockDim.x)
    {
        int const q = e / ntaps;
        taps[e] = first + q < s.m ? mixed_weight(s, t, n, first + q, e - q * ntaps, ntaps) : 0.f;
    }
    for (int q = threadIdx.x; q < planes; q += blockDim.x)
    {
        bias[q] = first + q < s.m ? mixed_bias(s, t, n, first + q) : 0.f;
    }
    __syncthreads();

    int const q = threadIdx.x / slot_threads;
    int const gm = first + q;
    int const p = (blockIdx.x - n * pixel_blocks) * kDepthwiseThreads + threadIdx.x - q * slot_threads;
    if (q < planes && gm < s.m && p < pixels)
    {
        int const c = gm / (s.m / s.groups); // C/G == 1: group index == input channel
        T const* xc = t.x + (static_cast<size_t>(n) * s.c + c) * s.h * s.w;
        float const* plane_taps = taps + q * ntaps;
        int const oh = p / s.wo;
        int const ow = p - oh * s.wo;
        float acc = bias[q];
        for (int i = 0; i < s.kh; ++i)
        {
            int const ih = oh * s.stride_h - s.pad_top + i * s.dilation_h;
            if (ih < 0 || ih >= s.h)
            {
                continue;
            }
            for (int j = 0; j < s.kw; ++j)
            {
                int const iw = ow * s.stride_w - s.pad_left + j * s.dilation_w;
                if (iw >= 0 && iw < s.w)
                {
                    acc += plane_taps[i * s.kw + j] * load(xc, static_cast<size_t>(ih) * s.w + iw);
                }
            }
        }
        store(t.y, (static_cast<size_t>(n) * s.m + gm) * pixels + p, acc);
    }
}

// Implicit GEMM, grid (pixel tiles * N * G, M/G tiles, splits); each thread owns a 4x4 block of a BM x BN
// tile. kFused mixes weight tiles from the experts, otherwise reads them from `kernels` [N, M, R] (float32).
// kPointwise: 1x1, stride 1, no padding, so im2col(X) is X itself. With `partial` set, block z reduces its
// slice of `steps_per_split` reduction tiles and stores it into partial [splits, N, M, Ho*Wo] (float32) at z
// instead of into Y; slice 0 includes the bias. Every slice writes every output of its tiles.
template <typename T, int BM, int BN, bool kFused, bool kPointwise>
__global__ void __launch_bounds__((BM / kGemmThreadM) * (BN / kGemmThreadN))
    gemm_kernel(ConvShape s, Typed<T> t, float const* kernels, float* partial, int steps_per_split)
{
    constexpr int kThreads = (BM / kGemmThreadM) * (BN / kGemmThreadN);
    // +4 keeps rows 16-byte aligned and spreads the transposed weight stores over banks.
    __shared__ __align__(16) float sw[kGemmBK][BM + 4];
    __shared__ __align__(16) float sx[kGemmBK][BN];

    GemmBlock<T> const block(s, t.x, BM, BN);
    int const mg = block.mg, kernel_size = block.kernel_size, pixels = block.pixels;
    int const n = block.n, g = block.g, m0 = block.m0, p0 = block.p0;
    int const tx = threadIdx.x % (BN / kGemmThreadN);
    int const ty = threadIdx.x / (BN / kGemmThreadN);

    int const r_begin = blockIdx.z * steps_per_split * kGemmBK;
    int const r_stop = r_begin + steps_per_split * kGemmBK;
    int const r_end = r_stop < kernel_size ? r_stop : kernel_size;

    float acc[kGemmThreadM][kGemmThreadN] = {};
    for (int r0 = r_begin; r0 < r_end; r0 += kGemmBK)
    {
        for (int e = threadIdx.x; e < BM * kGemmBK; e += kThreads)
        {
            int const mm = e / kGemmBK;
            int const rr = e - mm * kGemmBK;
            int const m = m0 + mm;
            int const r = r0 + rr;
            float v = 0.f;
            if (m < mg && r < r_end)
            {
                int const gm = g * mg + m;
                v = kFused ? mixed_weight(s, t, n, gm, r, kernel_size)
                           : kernels[(static_cast<size_t>(n) * s.m + gm) * kernel_size + r];
            }
            sw[rr][mm] = v;
        }
        for (int e = threadIdx.x; e < kGemmBK * BN; e += kThreads)
        {
            int const rr = e / BN;
            int const pp = e - rr * BN;
            sx[rr][pp] = block.template x_at<kPointwise>(s, r0 + rr, p0 + pp, r_end);
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < kGemmBK; ++rr)
        {
            float4 const a = *reinterpret_cast<float4 const*>(&sw[rr][ty * kGemmThreadM]);
            float4 const b = *reinterpret_cast<float4 const*>(&sx[rr][tx * kGemmThreadN]);
            float const av[kGemmThreadM] = {a.x, a.y, a.z, a.w};
            float const bv[kGemmThreadN] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < kGemmThreadM; ++i)
            {
#pragma unroll
                for (int j = 0; j < kGemmThreadN; ++j)
                {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < kGemmThreadM; ++i)
    {
        int const m = m0 + ty * kGemmThreadM + i;
        if (m >= mg)
        {
            continue;
        }
        int const gm = g * mg + m;
        float const bias = blockIdx.z == 0 ? mixed_bias(s, t, n, gm) : 0.f;
#pragma unroll
        for (int j = 0; j < kGemmThreadN; ++j)
        {
            int const p = p0 + tx * kGemmThreadN + j;
            size_t const out = (static_cast<size_t>(n) * s.m + gm) * pixels + p;
            if (p < pixels && partial != nullptr)
            {
                size_t const outputs = static_cast<size_t>(s.n) * s.m * pixels;
                partial[blockIdx.z * outputs + out] = acc[i][j] + bias;
            }
            else if (p < pixels)
            {
                store(t.y, out, acc[i][j] + bias);
            }
        }
    }
}

// Tensor cores through WMMA (mma.h). TF32 fragments exist from sm_80 on: device code compiled for an older
// architecture (a torch extension built for the GPU at hand, or a compute_7x PTX JIT-compiled on a newer GPU)
// gets an empty tensor_core_kernel, which launch() never starts: tensor_cores_usable() refuses the algorithm
// unless both the current device and the code its kernel was compiled to are sm_80 or later.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define DYCONV_TENSOR_CORE_CODE 1
#else
#define DYCONV_TENSOR_CORE_CODE 0
#endif
constexpr int kTensorCoreArch = 80; // compute capability x 10 the tensor-core kernel needs

constexpr int kMmaTile = 64;          // weight rows of a block, and its columns unless wide: 2 x 2 warps of 32 x 32
constexpr int kMmaWideColumns = 128;   // columns of a wide block: 2 x 4 warps of 32 x 32 (256 threads)

#if DYCONV_TENSOR_CORE_CODE
constexpr int kMmaBK = 32; // reduction tile of the tensor-core kernel: 2 (half) or 4 (TF32) MMA steps
constexpr int kMmaWarpTile = 32;
constexpr int kMmaFragment = 16;
constexpr int kMmaPad = 8;      // row padding (elements): keeps rows 16-byte multiples, shifts them across banks

// Tensor-core operand element of T: TF32 (kept in float) for float32, half for float16. kK: the MMA's depth.
template <typename T>
struct MmaOperand;

template <>
struct MmaOperand<float>
{
    using Fragment = nvcuda::wmma::precision::tf32;
    using Element = float;
    static constexpr int kK = 8;

    __device__ static float convert(float v)
    {
        return nvcuda::wmma::__float_to_tf32(v);
    }
};

template <>
struct MmaOperand<__half>
{
    using Fragment = __half;
    using Element = __half;
    static constexpr int kK = 16;

    __device__ static __half convert(float v)
    {
        return __float2half_rn(v);
    }
};

// WMMA's rules for load/store_matrix_sync, for a row-major tile of `Element` with `ld` elements per row: ld a
// multiple of 16 bytes (8 halves, 4 floats), and every fragment pointer 256-bit (32-byte) aligned. Fragments
// start at rows that are multiples of `row_step` and columns that are multiples of `col_step` of an array whose
// base is 32-byte aligned, so both hold when ld and these steps are multiples of the byte counts below.
template <typename Element>
__host__ __device__ constexpr bool wmma_layout_ok(int ld, int row_step, int col_step)
{
    return (ld * sizeof(Element)) % 16 == 0 && (static_cast<size_t>(row_step) * ld * sizeof(Element)) % 32 == 0
        && (col_step * sizeof(Element)) % 32 == 0;
}
#endif

// What the rows of a tensor-core block's weight tile hold, i.e. which tensor-core path it runs.
enum class TensorCoreRows : int
{
    kMixed,      //!< tensor-core-fused: row mm is output channel m0 + mm of Wn, mixed from the experts while loaded
    kAggregated, //!< tensor-core-aggregated: row mm is output channel m0 + mm of Wn, read from the workspace
    kExperts,    //!< tensor-core-experts: row k * channels + j is expert k's unmixed kernel of channel m0 + j
};

// Output channels of one tensor-core block: kMmaTile, or for kExperts the channels whose K expert rows fit in
// the tile (floor(64 / K), 0 when K > 64).
__host__ __device__ constexpr int tensor_core_channels(TensorCoreRows rows, int experts)
{
    return rows == TensorCoreRows::kExperts ? kMmaTile / experts : kMmaTile;
}

// Columns of one tensor-core block: kMmaWideColumns for tensor-core-fused on planes of more than kMmaTile output
// pixels (each block mixes its weight tiles from the experts again, so twice the columns a block halves that
// work), else kMmaTile. The block has 2 threads per column.
__host__ __device__ constexpr int tensor_core_columns(TensorCoreRows rows, long long pixels)
{
    return rows == TensorCoreRows::kMixed && pixels > kMmaTile ? kMmaWideColumns : kMmaTile;
}

// The columns of a tensor-core block: `width` (tensor_core_columns) consecutive output pixels of one sample
// (kMixed, kAggregated: the weights are that sample's), or, for kExperts, whose weights are the same for every
// sample, 64 consecutive columns of the (sample, pixel) sequence of the whole batch, so that small planes (7x7,
// 14x14) fill whole tiles.
// Grid x: (column tiles) * G, group-major for kExperts, else (pixel tiles * N * G) as GemmBlock.
#if DYCONV_TENSOR_CORE_CODE
struct TensorCoreColumns
{
    int g, m0, q0;   //!< group, the tile's first output channel in the group, first column
    int columns;     //!< columns in all: Ho*Wo (per sample) or N*Ho*Wo (kExperts; validate keeps it, plus a
                     //!< block's width, in int)
    bool batch;      //!< the columns run over the whole batch (kExperts)
    int first_n;     //!< sample of the per-sample tiles (kExperts: unused, each column has its own)

    __device__ TensorCoreColumns(ConvShape const& s, TensorCoreRows rows, int channels, int width)
        : batch(rows == TensorCoreRows::kExperts)
    {
        int const pixels = s.ho * s.wo;
        columns = batch ? s.n * pixels : pixels;
        int const tiles = columns / width + (columns % width != 0);
        int const owner = blockIdx.x / tiles; // kExperts: g; else n * G + g
        g = batch ? owner : owner % s.groups;
        first_n = batch ? 0 : owner / s.groups;
        m0 = blockIdx.y * channels;
        q0 = (blockIdx.x - owner * tiles) * width;
    }

    //! Sample and pixel of column q (< columns).
    __device__ void decode(ConvShape const& s, int q, int& n, int& p) const
    {
        int const pixels = s.ho * s.wo;
        n = batch ? q / pixels : first_n;
        p = batch ? q - (q / pixels) * pixels : q;
    }
};
#endif

#if DYCONV_TENSOR_CORE_CODE
// One thread's column of a tensor-core block's X tile: im2col(X[n, g])[r, p] of the column's sample n and pixel
// p, for the rows r = first, first + kStep, first + 2 kStep, ... the thread loads one after another over the
// whole reduction (its column and row step are fixed: two threads share a column). The column
// is decoded once and the row's (c, ky, kx) advanced by additions, so the loads do no integer division. For
// kExperts with ODConv's S, each value is scaled by S[n, ky * kW + kx] (conv(X, W S) = conv(X S, W) tap by tap).
template <typename T, bool kPointwise, int kStep>
struct Im2colColumn
{
    T const* xg = nullptr;      //!< X[n] at the group's first input channel; null for a column past the last
    T const* spatial = nullptr; //!< S[n] (kExperts with S), else null
    int p = 0;                  //!< output pixel
    int ih0 = 0, iw0 = 0;       //!< input position of tap (0, 0)
    int r = 0, c = 0, ky = 0, kx = 0; //!< the next row: r = (c * kH + ky) * kW + kx

    __device__ Im2colColumn(ConvShape const& s, Typed<T> const& t, TensorCoreColumns const& tile, int q, int first,
        bool scale_by_spatial)
        : r(first)
    {
        int const taps = s.kh * s.kw;
        c = first / taps;
        ky = (first - c * taps) / s.kw;
        kx = first - c * taps - ky * s.kw;
        if (q >= tile.columns)
        {
            return;
        }
        int n = 0;
        tile.decode(s, q, n, p);
        int const cg = s.c / s.groups;
        xg = t.x + (static_cast<size_t>(n) * s.c + static_cast<size_t>(tile.g) * cg) * s.h * s.w;
        spatial = scale_by_spatial && t.spatial != nullptr ? t.spatial + static_cast<size_t>(n) * taps : nullptr;
        int const oh = p / s.wo;
        ih0 = oh * s.stride_h - s.pad_top;
        iw0 = (p - oh * s.wo) * s.stride_w - s.pad_left;
    }

    //! The value at row r (0 past the reduction or the column, or in the padding), then r += kStep.
    __device__ float next(ConvShape const& s, int kernel_size, int pixels)
    {
        float v = 0.f;
        if (xg != nullptr && r < kernel_size)
        {
            if (kPointwise)
            {
                v = load(xg, static_cast<size_t>(r) * pixels + p);
            }
            else
            {
                int const ih = ih0 + ky * s.dilation_h;
                int const iw = iw0 + kx * s.dilation_w;
                if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w)
                {
                    v = load(xg, (static_cast<size_t>(c) * s.h + ih) * s.w + iw);
                }
            }
            if (spatial != nullptr)
            {
                v *= load(spatial, ky * s.kw + kx);
            }
        }
        r += kStep;
        if (kPointwise)
        {
            return v;
        }
        kx += kStep;
        while (kx >= s.kw)
        {
            kx -= s.kw;
            ++ky;
        }
        while (ky >= s.kh)
        {
            ky -= s.kh;
            ++c;
        }
        return v;
    }
};
#endif

// One implicit GEMM on tensor cores for the three WMMA paths, grid tensor_core_grid of 64 x kColumns tiles (rows
// x columns, see TensorCoreColumns and tensor_core_columns), 2 * kColumns threads, reduction tiles of kMmaBK.
// Weight tile rows (see TensorCoreRows) come mixed from the experts in fp32 (like gemm_kernel<kFused>), from the
// per-sample kernels in `kernels` ([N, M, C/G*kH*kW] in T), or unmixed from the experts, and are stored as the
// MMA's operand type; X tiles (Im2colColumn: each thread one column, two threads a column) are converted the same
// way; a thread gathers its loads of a tile in two phases, each phase's loads in flight together before any store
// to shared memory (latency, not issue, bounds these loads; __launch_bounds__ keeps 512 threads a
// multiprocessor at <= 128 registers, which spills up to 44 bytes in a few instantiations with nvcc 13.0).
// Warp w multiplies the 32 x 32 part (w / W, w % W), W = kColumns / 32, of
// the tile as 2 x 2 fragments of 16 x 16 with fp32 accumulators, which are staged in shared memory (over the
// operand tiles, no longer read) for the epilogue: Y = the row (kExperts: sum_k A[n,k(,m)] times expert k's row,
// n the column's sample) + the mixed bias, bounds checked, stored in T. Rows past M/G (or past K * channels),
// reduction indices past C/G*kH*kW and columns past the last are zeros in shared memory and never stored. Static
// shared memory, 64 columns: at most 19,712 bytes (float), 18,688 (half); 128 columns: 35,072.
template <typename T, bool kPointwise, TensorCoreRows kRows, int kColumns>
__global__ void __launch_bounds__(2 * kColumns, 256 / kColumns) tensor_core_kernel(ConvShape s, Typed<T> t,
    T const* kernels)
{
#if DYCONV_TENSOR_CORE_CODE
    namespace wmma = nvcuda::wmma;
    using Op = MmaOperand<T>;
    using E = typename Op::Element;
    constexpr bool kExperts = kRows == TensorCoreRows::kExperts;
    constexpr int kK = Op::kK;
    constexpr int kThreads = 2 * kColumns;
    constexpr int kWarpColumns = kColumns / kMmaWarpTile; // warps along the columns (2 along the rows)
    constexpr int kLdw = kMmaBK + kMmaPad;   // sw: row-major M x R
    constexpr int kLdx = kColumns + kMmaPad; // sx: row-major R x P
    constexpr int kLdy = kColumns + kMmaPad; // sy: row-major M x P (float accumulators)
    constexpr int kColumnThreads = kThreads / kColumns;   // threads per X column, kColumnThreads rows apart
    constexpr int kRowThreads = kThreads / kMmaBK;        // weight rows loaded at once, one per kMmaBK threads
    constexpr int kWeightLoads = kMmaTile / kRowThreads;  // weight tile elements per thread
    constexpr int kXLoads = kMmaBK / kColumnThreads;       // X tile elements per thread
    constexpr int kLoadPhases = 2; // loads in flight per thread: (kWeightLoads + kXLoads) / kLoadPhases
    static_assert(kColumns == kMmaTile || kColumns == kMmaWideColumns, "the two block widths");
    static_assert(kWeightLoads % kLoadPhases == 0 && kXLoads % kLoadPhases == 0, "whole phases");
    static_assert(kMmaBK % kK == 0 && kMmaBK % kColumnThreads == 0, "the reduction tile: whole MMA steps and rows");
    static_assert(kThreads % kMmaBK == 0 && kMmaTile % kRowThreads == 0, "whole weight rows per pass");
    static_assert(kThreads == 32 * (kMmaTile / kMmaWarpTile) * kWarpColumns, "one warp per 32 x 32 part");
    static_assert(kMmaWarpTile == 2 * kMmaFragment, "2 x 2 fragments per warp");
    static_assert(wmma_layout_ok<E>(kLdw, kMmaFragment, kK), "weight fragments: ldm or alignment");
    static_assert(wmma_layout_ok<E>(kLdx, kK, kMmaFragment), "X fragments: ldm or alignment");
    static_assert(wmma_layout_ok<float>(kLdy, kMmaFragment, kMmaFragment), "accumulator stores: ldm or alignment");
    constexpr size_t kWeightBytes = sizeof(E) * kMmaTile * kLdw;
    constexpr size_t kOperandBytes = kWeightBytes + sizeof(E) * kMmaBK * kLdx;
    constexpr size_t kAccumulatorBytes = sizeof(float) * kMmaTile * kLdy;
    static_assert(kWeightBytes % 32 == 0, "the X tile starts 32-byte aligned");
    __shared__ __align__(32) unsigned char tiles[kOperandBytes > kAccumulatorBytes ? kOperandBytes : kAccumulatorBytes];
    __shared__ float sbias[kMmaTile]; // kMixed, kAggregated: the mixed bias of each row's channel
    static_assert(sizeof(tiles) + sizeof(sbias) <= 48 * 1024, "static shared memory");
    auto const sw = reinterpret_cast<E (*)[kLdw]>(tiles);
    auto const sx = reinterpret_cast<E (*)[kLdx]>(tiles + kWeightBytes);
    auto const sy = reinterpret_cast<float (*)[kLdy]>(tiles); // after the last MMA

    int const channels = tensor_core_channels(kRows, s.experts);
    TensorCoreColumns const tile(s, kRows, channels, kColumns);
    int const mg = s.m / s.groups;
    int const kernel_size = s.c / s.groups * s.kh * s.kw;
    int const pixels = s.ho * s.wo;
    int const g = tile.g, m0 = tile.m0;
    int const warp = threadIdx.x / 32;
    int const warp_m = (warp / kWarpColumns) * kMmaWarpTile;
    int const warp_p = (warp % kWarpColumns) * kMmaWarpTile;
    int const column = threadIdx.x % kColumns;    // this thread's X and output column
    int const first_row = threadIdx.x / kColumns; // its first X row, then every kColumnThreads-th
    int const weight_r = threadIdx.x % kMmaBK;    // its weight tile column
    int const weight_row = threadIdx.x / kMmaBK;  // its first weight row, then every kRowThreads-th
    Im2colColumn<T, kPointwise, kColumnThreads> x_column(s, t, tile, tile.q0 + column, first_row, kExperts);

    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[2][2];
    for (int i = 0; i < 2; ++i)
    {
        for (int j = 0; j < 2; ++j)
        {
            wmma::fill_fragment(acc[i][j], 0.f);
        }
    }
    for (int r0 = 0; r0 < kernel_size; r0 += kMmaBK)
    {
        int const r = r0 + weight_r;
        // kMixed: S[n, r mod kH*kW] of this thread's weight column, once per tile (every row of it shares r).
        float const spatial_scale = kRows == TensorCoreRows::kMixed && t.spatial != nullptr && r < kernel_size
            ? load(t.spatial, static_cast<size_t>(tile.first_n) * s.kh * s.kw + r % (s.kh * s.kw))
            : 1.f;
        // kExperts: row mm is channel m0 + channel of expert `expert`, mm = expert * channels + channel, stepped
        // by kRowThreads.
        int expert = weight_row / channels;
        int channel = weight_row - expert * channels;
        // This thread's loads of the tile in kLoadPhases phases, each phase's loads first, into registers, so
        // that they are in flight together; then their conversions and stores to shared memory.
#pragma unroll
        for (int phase = 0; phase < kLoadPhases; ++phase)
        {
            float weights[kWeightLoads / kLoadPhases];
            float xs[kXLoads / kLoadPhases];
#pragma unroll
            for (int i = 0; i < kWeightLoads / kLoadPhases; ++i)
            {
                int const mm = weight_row + (phase * kWeightLoads / kLoadPhases + i) * kRowThreads;
                weights[i] = 0.f;
                if (kExperts)
                {
                    if (expert < s.experts && m0 + channel < mg && r < kernel_size)
                    {
                        weights[i] = load(t.weight,
                            (static_cast<size_t>(expert) * s.m + g * mg + m0 + channel) * kernel_size + r);
                    }
                    for (channel += kRowThreads; channel >= channels; channel -= channels)
                    {
                        ++expert;
                    }
                }
                else if (m0 + mm < mg && r < kernel_size)
                {
                    int const gm = g * mg + m0 + mm;
                    weights[i] = kRows == TensorCoreRows::kMixed
                        ? spatial_scale * mix_experts(s, t, tile.first_n, gm, r, kernel_size)
                        : load(kernels, (static_cast<size_t>(tile.first_n) * s.m + gm) * kernel_size + r);
                }
            }
#pragma unroll
            for (int i = 0; i < kXLoads / kLoadPhases; ++i)
            {
                xs[i] = x_column.next(s, kernel_size, pixels);
            }
#pragma unroll
            for (int i = 0; i < kWeightLoads / kLoadPhases; ++i)
            {
                sw[weight_row + (phase * kWeightLoads / kLoadPhases + i) * kRowThreads][weight_r] =
                    Op::convert(weights[i]);
            }
#pragma unroll
            for (int i = 0; i < kXLoads / kLoadPhases; ++i)
            {
                sx[first_row + (phase * kXLoads / kLoadPhases + i) * kColumnThreads][column] = Op::convert(xs[i]);
            }
        }
        __syncthreads(); // the tiles are whole before any warp loads a fragment
#pragma unroll
        for (int kk = 0; kk < kMmaBK; kk += kK)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Op::Fragment, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Op::Fragment, wmma::row_major> b[2];
            for (int i = 0; i < 2; ++i)
            {
                wmma::load_matrix_sync(a[i], &sw[warp_m + kMmaFragment * i][kk], kLdw);
                wmma::load_matrix_sync(b[i], &sx[kk][warp_p + kMmaFragment * i], kLdx);
            }
            for (int i = 0; i < 2; ++i)
            {
                for (int j = 0; j < 2; ++j)
                {
                    wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads(); // every warp has its fragments before the next tiles (or the accumulators) overwrite them
    }

    for (int i = 0; i < 2; ++i)
    {
        for (int j = 0; j < 2; ++j)
        {
            wmma::store_matrix_sync(&sy[warp_m + kMmaFragment * i][warp_p + kMmaFragment * j], acc[i][j], kLdy,
                wmma::mem_row_major);
        }
    }
    for (int mm = threadIdx.x; mm < kMmaTile && !kExperts; mm += kThreads)
    {
        sbias[mm] = m0 + mm < mg ? mixed_bias(s, t, tile.first_n, g * mg + m0 + mm) : 0.f;
    }
    __syncthreads(); // every warp's part (and the bias) is in shared memory
    int const q = tile.q0 + column;
    if (q >= tile.columns)
    {
        return;
    }
    int n = 0;
    int p = 0;
    tile.decode(s, q, n, p);
    for (int mm = first_row; mm < channels && m0 + mm < mg; mm += kColumnThreads)
    {
        int const gm = g * mg + m0 + mm;
        float v = 0.f;
        if (kExperts) // this column's sample: its bias and attention (a few cached loads per output)
        {
            v = mixed_bias(s, t, n, gm);
            for (int k = 0; k < s.experts; ++k)
            {
                v += attention_at(s, t.attention, n, k, gm) * sy[k * channels + mm][column];
            }
        }
        else
        {
            v = sbias[mm] + sy[mm][column];
        }
        store(t.y, (static_cast<size_t>(n) * s.m + gm) * pixels + p, v);
    }
#endif
}

// y[i] = sum over z = 0, 1, ..., slices - 1 of partial[z, i] (split-K slices, bias in slice 0), added in this
// order whatever the order the slices ran in, and stored in y's element type.
template <typename T>
__global__ void reduce_slices_kernel(float const* partial, int slices, T* y, size_t count)
{
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
    {
        float sum = partial[i];
        for (int z = 1; z < slices; ++z)
        {
            sum += partial[z * count + i];
        }
        store(y, i, sum);
    }
}

long long ceil_div(long long a, long long b)
{
    return (a + b - 1) / b;
}

// A launch grid in 64 bits, so that one beyond CUDA's limits is refused instead of wrapped.
struct Grid
{
    long long x, y, z;

    bool fits() const
    {
        return x <= kMaxGridX && y <= kMaxGridYZ && z <= kMaxGridYZ;
    }

    dim3 dims() const
    {
        return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
    }
};

// The depthwise launch: (pixel blocks of kDepthwiseThreads * N, ceil(M / planes per block)).
Grid depthwise_grid(ConvShape const& s)
{
    return {ceil_div(static_cast<long long>(s.ho) * s.wo, kDepthwiseThreads) * s.n,
        ceil_div(s.m, depthwise_planes_per_block(s)), 1};
}

// The GEMM launch with BM x BN tiles: (pixel tiles * N * G, M/G tiles, split-K slices).
Grid gemm_grid(ConvShape const& s, int bm, int bn, int slices)
{
    return {ceil_div(static_cast<long long>(s.ho) * s.wo, bn) * s.n * s.groups, ceil_div(s.m / s.groups, bm), slices};
}

bool is_pointwise(ConvShape const& s)
{
    return s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 && s.pad_left == 0
        && s.pad_bottom == 0 && s.pad_right == 0;
}

// True when the current device is sm_80 or later and the code of tensor_core_kernel loaded for it was compiled
// for sm_80 or later (PTX version, so compute_7x PTX JIT-compiled on a newer GPU counts as older): otherwise the
// kernel is empty (DYCONV_TENSOR_CORE_CODE). False when either cannot be queried; a failed query's error is taken
// off the runtime's last-error slot, so that it is not reported by a later launch.
bool tensor_cores_usable()
{
    int device = 0;
    int major = 0;
    int minor = 0;
    cudaFuncAttributes attributes{};
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess
        || cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    {
        cudaGetLastError();
        return false;
    }
    if (major * 10 + minor < kTensorCoreArch)
    {
        return false;
    }
    void const* const kernel
        = reinterpret_cast<void const*>(&tensor_core_kernel<float, false, TensorCoreRows::kMixed, kMmaTile>);
    if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess)
    {
        cudaGetLastError();
        return false;
    }
    return attributes.ptxVersion >= kTensorCoreArch;
}

int multiprocessor_count()
{
    int device = 0;
    int count = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    {
        return 1;
    }
    return count;
}

// How the GEMM is launched: tile size and split-K factor (1: no split; else the number of slices).
struct GemmPlan
{
    bool small_tiles;
    int splits;
};

int reduction_steps(ConvShape const& s)
{
    return static_cast<int>(ceil_div(static_cast<long long>(s.c / s.groups) * s.kh * s.kw, kGemmBK));
}

// Slices of steps_per_split = ceil(steps / splits) reduction tiles: fewer than `splits` when they do not divide.
int split_slices(int steps, int splits)
{
    return static_cast<int>(ceil_div(steps, ceil_div(steps, splits)));
}

long long gemm_blocks(ConvShape const& s, int tile)
{
    Grid const grid = gemm_grid(s, tile, tile, 1);
    return grid.x * grid.y;
}

// 64x64 tiles unless they leave fewer than two blocks per multiprocessor; then 32x32, and if those are still
// too few, split the reduction so that about two blocks per multiprocessor run (each split >= 4 tiles of R),
// into as many slices as `partial_floats` (the split-K buffer available) holds; a plan needing more is refused
// for one with fewer slices, down to no split.
GemmPlan plan_gemm(ConvShape const& s, size_t partial_floats)
{
    long long const target = 2LL * multiprocessor_count();
    if (gemm_blocks(s, kLargeTile) >= target)
    {
        return {false, 1};
    }
    long long const blocks = gemm_blocks(s, kSmallTile);
    int const steps = reduction_steps(s);
    long long const outputs = static_cast<long long>(s.n) * s.m * s.ho * s.wo;
    long long const wanted = blocks >= target ? 1 : ceil_div(target, blocks);
    long long splits = std::min<long long>({wanted, steps / kMinStepsPerSplit, kMaxSplits});
    while (splits > 1 && static_cast<size_t>(split_slices(steps, static_cast<int>(splits))) * outputs > partial_floats)
    {
        --splits;
    }
    return {true, static_cast<int>(std::max<long long>(splits, 1))};
}

// The split-K buffer for a GPU of `multiprocessors`: slices * outputs floats for the largest plan plan_gemm can
// make there (at most kSplitKFloatsPerMultiprocessor each), 0 when the reduction is too short to split.
size_t partial_bytes(ConvShape const& s, int multiprocessors)
{
    long long const max_splits = std::min(reduction_steps(s) / kMinStepsPerSplit, kMaxSplits);
    if (max_splits < 2)
    {
        return 0;
    }
    long long const outputs = static_cast<long long>(s.n) * s.m * s.ho * s.wo;
    long long const floats = std::min(outputs * max_splits, kSplitKFloatsPerMultiprocessor * multiprocessors);
    return static_cast<size_t>(floats) * sizeof(float);
}

// Per-sample kernels of the aggregated path, rounded up so the split-K buffer after them stays aligned.
size_t kernels_bytes(ConvShape const& s)
{
    size_t const bytes = static_cast<size_t>(s.n) * s.m * (s.c / s.groups) * s.kh * s.kw * sizeof(float);
    return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// The part of the workspace a path cannot run without: the per-sample kernels of kGemmAggregated,
// kCublasPointwise and kTensorCoreAggregated (float32, enough for float16 kernels too).
size_t required_workspace(ConvShape const& s, Algo chosen)
{
    bool const aggregates = chosen == Algo::kGemmAggregated || chosen == Algo::kCublasPointwise
        || chosen == Algo::kTensorCoreAggregated;
    return aggregates && s.n > 0 ? kernels_bytes(s) : 0;
}

template <typename T, int BM, int BN, bool kFused>
void launch_gemm_tiles(
    ConvShape const& s, Typed<T> const& t, float const* kernels, float* partial, int splits, cudaStream_t stream)
{
    int const steps = reduction_steps(s);
    int const steps_per_split = static_cast<int>(ceil_div(steps, splits));
    int const slices = split_slices(steps, splits);
    dim3 const grid = gemm_grid(s, BM, BN, slices).dims();
    dim3 const block((BM / kGemmThreadM) * (BN / kGemmThreadN));
    if (is_pointwise(s))
    {
        gemm_kernel<T, BM, BN, kFused, true><<<grid, block, 0, stream>>>(s, t, kernels, partial, steps_per_split);
    }
    else
    {
        gemm_kernel<T, BM, BN, kFused, false><<<grid, block, 0, stream>>>(s, t, kernels, partial, steps_per_split);
    }
}

// `partial` is the split-K buffer of `partial_floats` floats, used only when the plan splits.
template <typename T, bool kFused>
void launch_gemm(ConvShape const& s, Typed<T> const& t, float const* kernels, float* partial, size_t partial_floats,
    cudaStream_t stream)
{
    GemmPlan const plan = plan_gemm(s, partial_floats);
    if (!plan.small_tiles)
    {
        launch_gemm_tiles<T, kLargeTile, kLargeTile, kFused>(s, t, kernels, nullptr, 1, stream);
        return;
    }
    if (plan.splits == 1)
    {
        launch_gemm_tiles<T, kSmallTile, kSmallTile, kFused>(s, t, kernels, nullptr, 1, stream);
        return;
    }
    size_t const count = static_cast<size_t>(s.n) * s.m * s.ho * s.wo;
    launch_gemm_tiles<T, kSmallTile, kSmallTile, kFused>(s, t, kernels, partial, plan.splits, stream);
    size_t const blocks = std::min<size_t>((count + kAggregateThreads - 1) / kAggregateThreads, 65535);
    int const slices = split_slices(reduction_steps(s), plan.splits);
    reduce_slices_kernel<T><<<static_cast<int>(blocks), kAggregateThreads, 0, stream>>>(partial, slices, t.y, count);
}

template <typename T, typename K>
void launch_aggregate(ConvShape const& s, Typed<T> const& t, K* kernels, cudaStream_t stream)
{
    size_t const total = static_cast<size_t>(s.n) * s.m * (s.c / s.groups) * s.kh * s.kw;
    size_t const blocks = (total + kAggregateThreads - 1) / kAggregateThreads;
    int const grid = static_cast<int>(blocks < 65535 ? blocks : 65535);
    aggregate_kernel<T><<<grid, kAggregateThreads, 0, stream>>>(s, t, kernels);
}

// The tensor-core launch of `rows` with blocks `width` columns wide (tensor_core_columns; see
// TensorCoreColumns): (pixel tiles * N * G, M/G tiles of 64), or for kExperts (ceil(N*Ho*Wo / width) * G, M/G
// tiles of tensor_core_channels).
Grid tensor_core_grid(ConvShape const& s, TensorCoreRows rows, int width)
{
    if (rows == TensorCoreRows::kExperts)
    {
        long long const row_tiles = ceil_div(s.m / s.groups, tensor_core_channels(rows, s.experts));
        return {ceil_div(static_cast<long long>(s.n) * s.ho * s.wo, width) * s.groups, row_tiles, 1};
    }
    return gemm_grid(s, kMmaTile, width, 1);
}

// tensor_core_grid of the block width the launch uses.
Grid tensor_core_grid(ConvShape const& s, TensorCoreRows rows)
{
    return tensor_core_grid(s, rows, tensor_core_columns(rows, static_cast<long long>(s.ho) * s.wo));
}

template <typename T, TensorCoreRows kRows, int kColumns>
void launch_tensor_core_blocks(ConvShape const& s, Typed<T> const& t, T const* kernels, cudaStream_t stream)
{
    dim3 const grid = tensor_core_grid(s, kRows, kColumns).dims();
    if (is_pointwise(s))
    {
        tensor_core_kernel<T, true, kRows, kColumns><<<grid, 2 * kColumns, 0, stream>>>(s, t, kernels);
    }
    else
    {
        tensor_core_kernel<T, false, kRows, kColumns><<<grid, 2 * kColumns, 0, stream>>>(s, t, kernels);
    }
}

// The kernel of the block width tensor_core_columns gives (wide blocks only for kMixed).
template <typename T, TensorCoreRows kRows>
void launch_tensor_core(ConvShape const& s, Typed<T> const& t, T const* kernels, cudaStream_t stream)
{
    if constexpr (kRows == TensorCoreRows::kMixed)
    {
        if (tensor_core_columns(kRows, static_cast<long long>(s.ho) * s.wo) == kMmaWideColumns)
        {
            launch_tensor_core_blocks<T, kRows, kMmaWideColumns>(s, t, kernels, stream);
            return;
        }
    }
    launch_tensor_core_blocks<T, kRows, kMmaTile>(s, t, kernels, stream);
}

#if DYCONV_WITH_CUBLAS
// y[n, m, p] = sum_k A[n,k] B[k, m]: the C the cuBLAS GEMM adds its product to (beta = 1).
template <typename T>
__global__ void bias_kernel(ConvShape s, Typed<T> t)
{
    size_t const pixels = static_cast<size_t>(s.ho) * s.wo;
    size_t const total = static_cast<size_t>(s.n) * s.m * pixels;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
    {
        size_t const nm = i / pixels;
        store(t.y, i, mixed_bias(s, t, static_cast<int>(nm / s.m), static_cast<int>(nm % s.m)));
    }
}

// One cuBLAS handle per thread and device, created on first use and never destroyed: a handle destroyed at
// thread or process exit may outlive the CUDA context it was made in.
cublasHandle_t blas_handle(cudaError_t& error)
{
    thread_local std::unordered_map<int, cublasHandle_t> handles;
    int device = 0;
    error = cudaGetDevice(&device);
    if (error != cudaSuccess)
    {
        return nullptr;
    }
    auto found = handles.find(device);
    if (found == handles.end())
    {
        cublasHandle_t handle = nullptr;
        if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS)
        {
            error = cudaErrorInitializationError;
            return nullptr;
        }
        found = handles.emplace(device, handle).first;
    }
    return found->second;
}

// Y = Wn X per (sample, group) on tensor cores, Wn [N, M, C/G] in T (the aggregated kernels). Row-major
// Y [M/G, P] = Wn [M/G, C/G] X [C/G, P] is column-major Y^T [P, M/G] = X^T [P, C/G] Wn^T [C/G, M/G]: both
// operands untransposed, each leading dimension its row-major row length, and the N*G problems evenly strided
// (group g of sample n is problem n*G + g in X, Wn and Y alike).
template <typename T>
cudaError_t launch_cublas_pointwise(ConvShape const& s, Typed<T> const& t, T const* kernels, cudaStream_t stream)
{
    cudaError_t error = cudaSuccess;
    cublasHandle_t const handle = blas_handle(error);
    if (handle == nullptr || cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS)
    {
        return error != cudaSuccess ? error : cudaErrorInitializationError;
    }
    if (t.bias != nullptr)
    {
        size_t const total = static_cast<size_t>(s.n) * s.m * s.ho * s.wo;
        size_t const blocks = std::min<size_t>((total + kAggregateThreads - 1) / kAggregateThreads, 65535);
        bias_kernel<T><<<static_cast<int>(blocks), kAggregateThreads, 0, stream>>>(s, t);
    }
    constexpr bool kHalf = std::is_same<T, __half>::value;
    cudaDataType const type = kHalf ? CUDA_R_16F : CUDA_R_32F;
    cublasComputeType_t const compute = kHalf ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    int const cg = s.c / s.groups;
    int const mg = s.m / s.groups;
    int const pixels = s.ho * s.wo;
    float const alpha = 1.f;
    float const beta = t.bias != nullptr ? 1.f : 0.f;
    cublasStatus_t const status = cublasGemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, pixels, mg, cg, &alpha,
        t.x, type, pixels, static_cast<long long>(cg) * pixels, kernels, type, cg, static_cast<long long>(mg) * cg,
        &beta, t.y, type, pixels, static_cast<long long>(mg) * pixels, s.n * s.groups, compute, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        return status == CUBLAS_STATUS_INVALID_VALUE ? cudaErrorInvalidValue : cudaErrorUnknown;
    }
    return cudaSuccess;
}
#endif

// `workspace_bytes` >= the algorithm's fixed part (kernels_bytes for kGemmAggregated); the rest bounds split-K.
template <typename T>
cudaError_t launch(ConvShape const& s, ConvTensors const& tensors, void* workspace, size_t workspace_bytes, Algo algo,
    cudaStream_t stream)
{
    Typed<T> const t = typed<T>(tensors);
    switch (algo)
    {
    case Algo::kDepthwise:
    {
        dim3 const grid = depthwise_grid(s).dims();
        size_t const shared = static_cast<size_t>(depthwise_planes_per_block(s)) * s.kh * s.kw * sizeof(float);
        depthwise_kernel<T><<<grid, kDepthwiseThreads, shared, stream>>>(s, t);
        break;
    }
    case Algo::kGemmFused:
        launch_gemm<T, true>(s, t, nullptr, static_cast<float*>(workspace), workspace_bytes / sizeof(float), stream);
        break;
    case Algo::kGemmAggregated:
    {
        float* kernels = static_cast<float*>(workspace);
        float* partial = reinterpret_cast<float*>(static_cast<char*>(workspace) + kernels_bytes(s));
        launch_aggregate<T>(s, t, kernels, stream);
        launch_gemm<T, false>(s, t, kernels, partial, (workspace_bytes - kernels_bytes(s)) / sizeof(float), stream);
        break;
    }
    case Algo::kTensorCoreFused: // dynamic_conv2d checked tensor_cores_usable (algo_available)
        launch_tensor_core<T, TensorCoreRows::kMixed>(s, t, nullptr, stream);
        break;
    case Algo::kTensorCoreAggregated:
    {
        T* kernels = static_cast<T*>(workspace);
        launch_aggregate<T>(s, t, kernels, stream);
        launch_tensor_core<T, TensorCoreRows::kAggregated>(s, t, kernels, stream);
        break;
    }
    case Algo::kTensorCoreExperts:
        launch_tensor_core<T, TensorCoreRows::kExperts>(s, t, nullptr, stream);
        break;
    case Algo::kCublasPointwise:
#if DYCONV_WITH_CUBLAS
    {
        T* kernels = static_cast<T*>(workspace);
        launch_aggregate<T>(s, t, kernels, stream);
        cudaError_t const status = launch_cublas_pointwise<T>(s, t, kernels, stream);
        if (status != cudaSuccess)
        {
            return status;
        }
        break;
    }
#else
        return cudaErrorNotSupported; // refused by dynamic_conv2d before
#endif
    case Algo::kAuto: return cudaErrorInvalidValue; // resolved by dynamic_conv2d, which refuses non-Algo values
    }
    return cudaGetLastError();
}

} // namespace

cudaError_t validate(ConvShape const& s, Algo algo)
{
    bool const positive = s.n >= 0 && s.c > 0 && s.h > 0 && s.w > 0 && s.experts > 0 && s.m > 0 && s.kh > 0
        && s.kw > 0 && s.groups > 0 && s.stride_h > 0 && s.stride_w > 0 && s.dilation_h > 0 && s.dilation_w > 0;
    bool const pads = s.pad_top >= 0 && s.pad_left >= 0 && s.pad_bottom >= 0 && s.pad_right >= 0;
    if (!positive || !pads || s.c % s.groups != 0 || s.m % s.groups != 0)
    {
        return cudaErrorInvalidValue;
    }
    ConvShape const derived = conv_shape(s);
    if (derived.ho != s.ho || derived.wo != s.wo || s.ho <= 0 || s.wo <= 0)
    {
        return cudaErrorInvalidValue;
    }
    // The kernels index one output plane and one kernel in int; the grid is the chosen path's (for a SIMT GEMM
    // its plan with the most blocks, kSmallTile tiles; split-K slices stay far below the z limit);
    // the tensor-core paths index their columns in int, a block's width past the last; tensor-core-experts needs
    // every expert of a channel in one 64-row tile, and its columns are all N*Ho*Wo.
    bool const int_indices = static_cast<long long>(s.ho) * s.wo <= INT32_MAX
        && static_cast<long long>(s.c / s.groups) * s.kh * s.kw <= INT32_MAX;
    long long const tensor_core_column_limit = INT32_MAX - kMmaWideColumns;
    // cuBLAS takes the (sample, group) problem count as an int.
    Algo const chosen = algo == Algo::kAuto ? select_algo(s) : algo;
    Grid grid = gemm_grid(s, kSmallTile, kSmallTile, 1);
    switch (chosen)
    {
    case Algo::kDepthwise: grid = depthwise_grid(s); break;
    case Algo::kTensorCoreFused:
    case Algo::kTensorCoreAggregated:
        if (static_cast<long long>(s.ho) * s.wo > tensor_core_column_limit)
        {
            return cudaErrorInvalidValue;
        }
        grid = tensor_core_grid(
            s, chosen == Algo::kTensorCoreFused ? TensorCoreRows::kMixed : TensorCoreRows::kAggregated);
        break;
    case Algo::kTensorCoreExperts: // its columns run over the whole batch
        if (s.experts > kMmaTile || static_cast<long long>(s.n) * s.ho * s.wo > tensor_core_column_limit)
        {
            return cudaErrorInvalidValue;
        }
        grid = tensor_core_grid(s, TensorCoreRows::kExperts);
        break;
    default: break;
    }
    bool const fits = chosen == Algo::kCublasPointwise ? static_cast<long long>(s.n) * s.groups <= INT32_MAX
                                                        : grid.fits();
    return int_indices && fits ? cudaSuccess : cudaErrorInvalidValue;
}

Algo select_algo(ConvShape const& s)
{
    if (s.c / s.groups == 1)
    {
        return Algo::kDepthwise;
    }
    return s.ho * s.wo <= kFusedMaxPixels ? Algo::kGemmFused : Algo::kGemmAggregated;
}

size_t workspace_size(ConvShape const& s, Algo algo, int32_t multiprocessors)
{
    Algo const chosen = algo == Algo::kAuto ? select_algo(s) : algo;
    bool const splits = chosen == Algo::kGemmFused || chosen == Algo::kGemmAggregated;
    if (!splits || s.n == 0)
    {
        return required_workspace(s, chosen);
    }
    int const count = multiprocessors > 0 ? multiprocessors : multiprocessor_count();
    return required_workspace(s, chosen) + partial_bytes(s, count);
}

cudaError_t dynamic_conv2d(ConvShape const& shape, DType dtype, ConvTensors const& tensors, void* workspace,
    size_t workspace_bytes, cudaStream_t stream, Algo algo)
{
    if (!is_algo(static_cast<int64_t>(algo)))
    {
        return cudaErrorInvalidValue;
    }
    cudaError_t const status = validate(shape, algo);
    if (status != cudaSuccess)
    {
        return status;
    }
    if (shape.n == 0)
    {
        return cudaSuccess;
    }
    Algo const chosen = algo == Algo::kAuto ? select_algo(shape) : algo;
    if (!algo_available(chosen))
    {
        return cudaErrorNotSupported;
    }
    size_t const needed = required_workspace(shape, chosen);
    if (!algo_applies(shape, chosen) || workspace_bytes < needed || (workspace_bytes > 0 && workspace == nullptr))
    {
        return cudaErrorInvalidValue;
    }
    return dtype == DType::kFloat16 ? launch<__half>(shape, tensors, workspace, workspace_bytes, chosen, stream)
                                    : launch<float>(shape, tensors, workspace, workspace_bytes, chosen, stream);
}

cudaError_t aggregate_kernels(
    ConvShape const& shape, DType dtype, ConvTensors const& tensors, float* kernels, cudaStream_t stream)
{
    cudaError_t const status = validate(shape);
    if (status != cudaSuccess || shape.n == 0)
    {
        return status;
    }
    if (dtype == DType::kFloat16)
    {
        launch_aggregate<__half>(shape, typed<__half>(tensors), kernels, stream);
    }
    else
    {
        launch_aggregate<float>(shape, typed<float>(tensors), kernels, stream);
    }
    return cudaGetLastError();
}

bool algo_applies(ConvShape const& s, Algo algo)
{
    return is_algo(static_cast<int64_t>(algo)) && (algo != Algo::kDepthwise || s.c / s.groups == 1)
        && (algo != Algo::kCublasPointwise || is_pointwise(s))
        && (algo != Algo::kTensorCoreExperts || s.experts <= kMmaTile);
}

bool algo_available(Algo algo)
{
    if (needs_sm80(algo))
    {
        return tensor_cores_usable();
    }
    return is_algo(static_cast<int64_t>(algo)) && (DYCONV_WITH_CUBLAS || algo != Algo::kCublasPointwise);
}

char const* algo_name(Algo algo)
{
    switch (algo)
    {
    case Algo::kAuto: return "auto";
    case Algo::kDepthwise: return "depthwise";
    case Algo::kGemmFused: return "gemm-fused";
    case Algo::kGemmAggregated: return "gemm-aggregated";
    case Algo::kCublasPointwise: return "cublas-pointwise";
    case Algo::kTensorCoreFused: return "tensor-core-fused";
    case Algo::kTensorCoreAggregated: return "tensor-core-aggregated";
    case Algo::kTensorCoreExperts: return "tensor-core-experts";
    }
    return "unknown";
}

} // namespace dyconv
