#include "mix_kernels.hpp"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <openvino/core/parallel.hpp>
#include <openvino/core/type/bfloat16.hpp>
#include <openvino/core/type/float16.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace dyconv_ov {
namespace {

// Floats of one work tile: the K expert tiles of this size stay in L1/L2 while every sample's output tile
// is written from them.
constexpr size_t kTileFloats = 2048;

// One expert element as f32: the storage types W may have.
inline float to_float(float v) { return v; }
inline float to_float(ov::bfloat16 v) { return static_cast<float>(v); }
inline float to_float(ov::float16 v) { return static_cast<float>(v); }

#if defined(__AVX512F__)
// 16 consecutive expert elements as f32.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const ov::bfloat16* p) {  // bf16 is the top half of an f32
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load16(const ov::float16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

// out[j] = sum_k coefficient[k * stride] * experts[k][j] for j < count, in one pass: each output element
// is written once, each expert element read once and converted to f32 in registers.
template <typename T>
void mix_span(float* out, const T* const* experts, const float* coefficient, size_t stride, size_t k_count,
              size_t count) {
    size_t j = 0;
#if defined(__AVX512F__)
    for (; j + 32 <= count; j += 32) {  // two independent accumulators hide the FMA latency
        __m512 c = _mm512_set1_ps(coefficient[0]);
        __m512 lo = _mm512_mul_ps(c, load16(experts[0] + j)), hi = _mm512_mul_ps(c, load16(experts[0] + j + 16));
        for (size_t k = 1; k < k_count; ++k) {
            c = _mm512_set1_ps(coefficient[k * stride]);
            lo = _mm512_fmadd_ps(c, load16(experts[k] + j), lo);
            hi = _mm512_fmadd_ps(c, load16(experts[k] + j + 16), hi);
        }
        _mm512_storeu_ps(out + j, lo);
        _mm512_storeu_ps(out + j + 16, hi);
    }
#endif
    for (; j < count; ++j) {
        float sum = coefficient[0] * to_float(experts[0][j]);
        for (size_t k = 1; k < k_count; ++k) sum += coefficient[k * stride] * to_float(experts[k][j]);
        out[j] = sum;
    }
}

// out[0 .. count) = tile as bf16, rounded to nearest even.
inline void store_tile(ov::bfloat16* out, const float* tile, size_t count) {
    size_t j = 0;
#if defined(__AVX512BF16__)
    for (; j + 16 <= count; j += 16) {
        const __m256bh bits = _mm512_cvtneps_pbh(_mm512_loadu_ps(tile + j));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), reinterpret_cast<const __m256i&>(bits));
    }
#endif
    for (; j < count; ++j) out[j] = ov::bfloat16(tile[j]);
}

// Per-sample factors of the mixed kernels, each null when absent: S [N, kH, kW] (per tap) and T [N, C] (per
// input channel; input channel c of output channel m is g*C/G + c for m's group g = m / (M/G)).
struct KernelScales {
    const float* spatial = nullptr;
    const float* channel = nullptr;
    size_t input_channels = 0, rows_per_group = 0;  // C, and M/G
};

// o[0 .. (m1-m0)*row) *= sample n's factors, o holding the mixed rows m0 .. m1-1 (rows of C/G * taps), in one
// pass over the tile while it is in L1.
void scale_rows(float* __restrict o, const KernelScales& scales, size_t n, size_t m0, size_t m1, size_t row,
                size_t taps) {
    const float* __restrict pattern = scales.spatial ? scales.spatial + n * taps : nullptr;
    const size_t channels = row / taps;  // of one group: C/G
    for (size_t m = m0; m < m1; ++m) {
        const float* __restrict factor = nullptr;
        if (scales.channel) factor = scales.channel + n * scales.input_channels + m / scales.rows_per_group * channels;
        float* __restrict kernel = o + (m - m0) * row;
        if (taps == 1) {  // 1x1: each element has one channel factor and the single tap's
            const float tap = pattern ? pattern[0] : 1.0f;
            if (factor)
                for (size_t c = 0; c < channels; ++c) kernel[c] *= factor[c] * tap;
            else
                for (size_t c = 0; c < channels; ++c) kernel[c] *= tap;
            continue;
        }
        for (size_t c = 0; c < channels; ++c) {
            const float f = factor ? factor[c] : 1.0f;
            float* __restrict taps_c = kernel + c * taps;
            if (pattern)
                for (size_t t = 0; t < taps; ++t) taps_c[t] *= f * pattern[t];
            else
                for (size_t t = 0; t < taps; ++t) taps_c[t] *= f;
        }
    }
}

// Wn for experts stored as T, written as O (f32, or bf16 for a bf16 convolution); see MixKernels::evaluate.
// Each sample's tile is mixed in f32 (into Wn itself when O is f32, else into an L1 scratch tile), scaled
// by the sample's factors, then stored.
template <typename T, typename O>
void mix_kernels(const T* weight, const float* a, const KernelScales& scales, O* out, size_t n_count,
                 size_t k_count, size_t m_count, size_t row, size_t taps, bool per_channel) {
    constexpr bool in_place = std::is_same<O, float>::value;
    const size_t per_sample = m_count * row;
    // Tiles are whole output channels, so a per-channel coefficient and the spatial pattern line up.
    const size_t rows_per_tile = std::max<size_t>(1, kTileFloats / row);
    const size_t tiles = (m_count + rows_per_tile - 1) / rows_per_tile;
    ov::parallel_nt(0, [&](int thread, int threads) {
        std::vector<const T*> experts(k_count), channel(k_count);
        std::vector<float> scratch(in_place ? 0 : rows_per_tile * row);
        size_t first = 0, last = 0;
        ov::splitter(tiles, threads, thread, first, last);
        for (size_t tile = first; tile < last; ++tile) {
            const size_t m0 = tile * rows_per_tile, m1 = std::min(m_count, m0 + rows_per_tile);
            const size_t begin = m0 * row, count = (m1 - m0) * row;
            for (size_t k = 0; k < k_count; ++k) experts[k] = weight + k * per_sample + begin;
            for (size_t n = 0; n < n_count; ++n) {
                O* target = out + n * per_sample + begin;
                float* o = in_place ? reinterpret_cast<float*>(target) : scratch.data();
                if (!per_channel) {
                    mix_span(o, experts.data(), a + n * k_count, 1, k_count, count);
                } else {
                    for (size_t m = m0; m < m1; ++m) {
                        const size_t offset = (m - m0) * row;
                        for (size_t k = 0; k < k_count; ++k) channel[k] = experts[k] + offset;
                        mix_span(o + offset, channel.data(), a + n * k_count * m_count + m, m_count, k_count, row);
                    }
                }
                if (scales.spatial || scales.channel) scale_rows(o, scales, n, m0, m1, row, taps);
                if constexpr (!in_place) store_tile(target, o, count);
            }
        }
    });
}

// mix_kernels for the stored type of W, writing `out`'s element type.
template <typename O>
void mix_stored(const ov::Tensor& weight, const float* a, const KernelScales& scales, O* out, size_t n_count,
                size_t k_count, size_t m_count, size_t row, size_t taps, bool per_channel) {
    const auto type = weight.get_element_type();
    if (type == ov::element::f32) {
        mix_kernels(weight.data<const float>(), a, scales, out, n_count, k_count, m_count, row, taps, per_channel);
    } else if (type == ov::element::bf16) {
        mix_kernels(weight.data<const ov::bfloat16>(), a, scales, out, n_count, k_count, m_count, row, taps,
                    per_channel);
    } else {
        mix_kernels(weight.data<const ov::float16>(), a, scales, out, n_count, k_count, m_count, row, taps,
                    per_channel);
    }
}

}  // namespace

MixKernels::MixKernels(const ov::OutputVector& inputs, int64_t group, bool with_spatial, bool with_bias,
                       bool with_channel_scale, std::string kernel_type)
    : ov::op::Op(inputs),
      m_group(group),
      m_with_spatial(with_spatial),
      m_with_bias(with_bias),
      m_with_channel_scale(with_channel_scale),
      m_kernel_type(std::move(kernel_type)) {
    constructor_validate_and_infer_types();
}

void MixKernels::validate_and_infer_types() {
    const auto inputs = get_input_size();
    const size_t expected = 2 + (m_with_spatial ? 1 : 0) + (m_with_bias ? 1 : 0) + (m_with_channel_scale ? 1 : 0);
    NODE_VALIDATION_CHECK(this, inputs == expected, "MixKernels takes A, W", m_with_spatial ? ", S" : "",
                          m_with_bias ? ", B" : "", m_with_channel_scale ? ", T" : "", "; got ", inputs, " inputs");
    const auto& a = get_input_partial_shape(0);
    const auto& w = get_input_partial_shape(1);
    NODE_VALIDATION_CHECK(this, w.is_static() && w.size() == 5,
                          "expert kernels W must have the static shape [K, M, C/G, kH, kW]; got ", w);
    const auto k = w[0].get_length(), m = w[1].get_length();
    NODE_VALIDATION_CHECK(this, m_group >= 1 && m % m_group == 0, "group ", m_group, " does not divide the ", m,
                          " output channels of W");
    NODE_VALIDATION_CHECK(this, a.rank().is_static() && (a.size() == 2 || a.size() == 3),
                          "attention A must be [N, K] or [N, K, M]; got ", a);
    NODE_VALIDATION_CHECK(this, a[1].compatible(k), "attention A ", a, " does not have the K = ", k,
                          " experts of W ", w);
    if (a.size() == 3) {
        NODE_VALIDATION_CHECK(this, a[2].compatible(m), "per-channel attention A ", a, " must have M = ", m,
                              " channels (W ", w, ")");
    }
    const auto w_type = get_input_element_type(1);
    NODE_VALIDATION_CHECK(this, get_input_element_type(0) == ov::element::f32, "attention A must be f32; got ",
                          get_input_element_type(0));
    NODE_VALIDATION_CHECK(this, w_type == ov::element::f32 || w_type == ov::element::f16 || w_type == ov::element::bf16,
                          "expert kernels W must be f32, f16 or bf16; got ", w_type);
    if (m_with_spatial) {
        const auto& s = get_input_partial_shape(2);
        NODE_VALIDATION_CHECK(this, get_input_element_type(2) == ov::element::f32, "spatial attention S must be f32");
        NODE_VALIDATION_CHECK(this, s.rank().compatible(3) && s[0].compatible(a[0]) && s[1].compatible(w[3]) &&
                                        s[2].compatible(w[4]),
                              "spatial attention S must be [N, kH, kW] = [", a[0], ", ", w[3], ", ", w[4], "]; got ", s);
    }
    NODE_VALIDATION_CHECK(this, m_kernel_type == "f32" || m_kernel_type == "bf16",
                          "kernel_type must be f32 or bf16; got ", m_kernel_type);
    set_output_type(0, m_kernel_type == "bf16" ? ov::element::bf16 : ov::element::f32,
                    ov::PartialShape{a[0] * m_group, m / m_group, w[2], w[3], w[4]});
    if (m_with_channel_scale) {
        const auto& t = get_input_partial_shape(inputs - 1);
        NODE_VALIDATION_CHECK(this, get_input_element_type(inputs - 1) == ov::element::f32,
                              "input-channel scale T must be f32");
        NODE_VALIDATION_CHECK(this, t.compatible(ov::PartialShape{a[0], w[2] * m_group}),
                              "input-channel scale T must be [N, C] = [", a[0], ", ", w[2] * m_group, "]; got ", t);
    }
    if (m_with_bias) {
        const size_t index = 2 + (m_with_spatial ? 1 : 0);
        const auto& b = get_input_partial_shape(index);
        NODE_VALIDATION_CHECK(this, get_input_element_type(index) == ov::element::f32, "expert biases B must be f32");
        NODE_VALIDATION_CHECK(this, b.compatible(ov::PartialShape{k, m}), "expert biases B must be [K, M] = [", k,
                              ", ", m, "]; got ", b);
        set_output_type(1, ov::element::f32, ov::PartialShape{a[0], m, 1, 1});
    }
}

std::shared_ptr<ov::Node> MixKernels::clone_with_new_inputs(const ov::OutputVector& inputs) const {
    return std::make_shared<MixKernels>(inputs, m_group, m_with_spatial, m_with_bias, m_with_channel_scale,
                                        m_kernel_type);
}

bool MixKernels::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("group", m_group);
    visitor.on_attribute("with_spatial", m_with_spatial);
    visitor.on_attribute("with_bias", m_with_bias);
    visitor.on_attribute("with_channel_scale", m_with_channel_scale);
    visitor.on_attribute("kernel_type", m_kernel_type);
    return true;
}

bool MixKernels::has_evaluate() const {
    return true;
}

bool MixKernels::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor& attention = inputs[0];
    const ov::Tensor& weight = inputs[1];
    const ov::Shape a_shape = attention.get_shape(), w_shape = weight.get_shape();
    const size_t n_count = a_shape[0], k_count = w_shape[0], m_count = w_shape[1];
    const size_t taps = w_shape[3] * w_shape[4], row = w_shape[2] * taps;  // one output channel's kernel
    const bool per_channel = a_shape.size() == 3;
    const bool spatial = m_with_spatial;
    OPENVINO_ASSERT(a_shape[1] == k_count && (!per_channel || a_shape[2] == m_count),
                    "MixKernels: attention ", a_shape, " does not fit W ", w_shape);
    OPENVINO_ASSERT(!spatial || inputs[2].get_shape() == ov::Shape({n_count, w_shape[3], w_shape[4]}),
                    "MixKernels: spatial attention ", inputs[2].get_shape(), " must be [N, kH, kW]");
    const size_t group = static_cast<size_t>(m_group);
    outputs[0].set_shape({n_count * group, m_count / group, w_shape[2], w_shape[3], w_shape[4]});

    const float* a = attention.data<const float>();
    KernelScales scales;
    scales.spatial = spatial ? inputs[2].data<const float>() : nullptr;
    if (m_with_channel_scale) {
        const ov::Tensor& channel = inputs.back();
        scales.input_channels = w_shape[2] * group;
        scales.rows_per_group = m_count / group;
        OPENVINO_ASSERT(channel.get_shape() == ov::Shape({n_count, scales.input_channels}),
                        "MixKernels: input-channel scale ", channel.get_shape(), " must be [N, C] = [", n_count, ", ",
                        scales.input_channels, "]");
        scales.channel = channel.data<const float>();
    }
    if (m_kernel_type == "bf16") {
        mix_stored(weight, a, scales, outputs[0].data<ov::bfloat16>(), n_count, k_count, m_count, row, taps,
                   per_channel);
    } else {
        mix_stored(weight, a, scales, outputs[0].data<float>(), n_count, k_count, m_count, row, taps, per_channel);
    }
    if (m_with_bias) {  // Bn[n, m] = sum_k A[n,k(,m)] B[k, m]: N*K*M multiply-adds, no threads needed
        const float* b = inputs[2 + (spatial ? 1 : 0)].data<const float>();
        outputs[1].set_shape({n_count, m_count, 1, 1});
        float* bn = outputs[1].data<float>();
        for (size_t n = 0; n < n_count; ++n) {
            float* out_n = bn + n * m_count;
            std::fill(out_n, out_n + m_count, 0.0f);
            for (size_t k = 0; k < k_count; ++k) {
                const float* bias_k = b + k * m_count;
                if (per_channel) {
                    const float* a_nk = a + (n * k_count + k) * m_count;
                    for (size_t m = 0; m < m_count; ++m) out_n[m] += a_nk[m] * bias_k[m];
                } else {
                    const float a_nk = a[n * k_count + k];
                    for (size_t m = 0; m < m_count; ++m) out_n[m] += a_nk * bias_k[m];
                }
            }
        }
    }
    return true;
}

}  // namespace dyconv_ov
