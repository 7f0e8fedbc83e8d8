// CPU stand-in for the part of cuBLAS that plugins/kernels calls, for the host emulation of the kernels
// (cuda_emulation.h; tests only). Declarations as in cublas_api.h (same names, values and signatures);
// cublasGemmStridedBatchedEx is a plain column-major reference of the documented call, so the emulated
// kernels' transposes, leading dimensions, strides, batch count and compute type are checked by the results:
//   C_b = alpha * op(A_b) op(B_b) + beta * C_b,  b < batchCount,  X_b = X + b * strideX,
//   op(A) is m x k (A is lda-strided columns, lda >= m untransposed, >= k transposed), op(B) k x n, C m x n.
// Products accumulate in float32; CUBLAS_COMPUTE_32F_FAST_TF32 first rounds float32 operands to TF32 (10-bit
// mantissa, round to nearest), as tensor cores do; beta == 0 does not read C. Invalid arguments return
// CUBLAS_STATUS_INVALID_VALUE as cuBLAS does.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

struct cublasContext
{
    cudaStream_t stream;
};
typedef cublasContext* cublasHandle_t;

typedef enum
{
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;

typedef enum
{
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
} cublasOperation_t;

typedef enum
{
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;

typedef enum
{
    CUBLAS_GEMM_DEFAULT = -1,
} cublasGemmAlgo_t;

namespace emu_blas
{
inline long long gemm_calls = 0; //!< cublasGemmStridedBatchedEx calls that computed (the test counts them)

inline float tf32(float v)
{
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits = (bits + 0x1000u) & ~0x1FFFu; // drop 13 of 23 mantissa bits, rounding to nearest (ties away)
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

inline float read(void const* p, cudaDataType type, long long i)
{
    return type == CUDA_R_16F ? __half2float(static_cast<__half const*>(p)[i]) : static_cast<float const*>(p)[i];
}

inline void write(void* p, cudaDataType type, long long i, float v)
{
    if (type == CUDA_R_16F)
        static_cast<__half*>(p)[i] = __float2half_rn(v);
    else
        static_cast<float*>(p)[i] = v;
}
} // namespace emu_blas

inline cublasStatus_t cublasCreate(cublasHandle_t* handle)
{
    *handle = new cublasContext{nullptr};
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
    cublasOperation_t transb, int m, int n, int k, void const* alpha, void const* A, cudaDataType Atype, int lda,
    long long int strideA, void const* B, cudaDataType Btype, int ldb, long long int strideB, void const* beta,
    void* C, cudaDataType Ctype, int ldc, long long int strideC, int batchCount, cublasComputeType_t computeType,
    cublasGemmAlgo_t)
{
    bool const a_n = transa == CUBLAS_OP_N;
    bool const b_n = transb == CUBLAS_OP_N;
    bool const sizes = handle != nullptr && m >= 0 && n >= 0 && k >= 0 && batchCount >= 0;
    bool const leading = lda >= std::max(1, a_n ? m : k) && ldb >= std::max(1, b_n ? k : n) && ldc >= std::max(1, m);
    if (!sizes || !leading)
    {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    bool const types = Atype == Btype && Btype == Ctype && (Atype == CUDA_R_32F || Atype == CUDA_R_16F);
    bool const compute = computeType == CUBLAS_COMPUTE_32F
        || (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 && Atype == CUDA_R_32F);
    if (!types || !compute)
    {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    bool const to_tf32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32;
    float const a_scale = *static_cast<float const*>(alpha);
    float const b_scale = *static_cast<float const*>(beta);
    for (long long b = 0; b < batchCount; ++b)
    {
        for (long long j = 0; j < n; ++j)
        {
            for (long long i = 0; i < m; ++i)
            {
                float acc = 0.f;
                for (long long l = 0; l < k; ++l)
                {
                    float x = emu_blas::read(A, Atype, b * strideA + (a_n ? i + l * lda : l + i * lda));
                    float y = emu_blas::read(B, Btype, b * strideB + (b_n ? l + j * ldb : j + l * ldb));
                    acc += to_tf32 ? emu_blas::tf32(x) * emu_blas::tf32(y) : x * y;
                }
                long long const c = b * strideC + i + j * ldc;
                float const prior = b_scale != 0.f ? b_scale * emu_blas::read(C, Ctype, c) : 0.f;
                emu_blas::write(C, Ctype, c, a_scale * acc + prior);
            }
        }
    }
    ++emu_blas::gemm_calls;
    return CUBLAS_STATUS_SUCCESS;
}
