// dyconv::MixKernels: the per-sample kernels of dyconv::DynamicConv2d, as one OpenVINO operation.
//
//   inputs   A  [N, K] or [N, K, M]   f32   attention, already normalised (rank 3: per output channel, DyNet)
//            W  [K, M, C/G, kH, kW]   f32 | f16 | bf16   expert kernels (static shape, usually a Constant)
//            S  [N, kH, kW]           f32   per-sample spatial attention (ODConv), when with_spatial
//            B  [K, M]                f32   expert biases, when with_bias (after S when both)
//            T  [N, C]                f32   per-sample input-channel scale, when with_channel_scale (last): the
//                                           conversion folds ODConv's X * T[:, :, None, None] into the kernels
//   outputs  Wn [N*G, M/G, C/G, kH, kW]  kernel_type, with Wn[n] = (sum_k A[n,k] W[k]) * S[n] * T[n] (mixed
//                                     in f32; T[n] scales input channel g*C/G + c of group g's kernels)
//            Bn [N, M, 1, 1]          f32, with Bn[n] = sum_k A[n,k] B[k], when with_bias (broadcasts over Y)
//   attrs    group G (the conv's group count; only the output's leading split depends on it),
//            with_spatial, with_bias, with_channel_scale, kernel_type ("f32" or "bf16": the runtime sets bf16
//            for bf16 inference, where the convolution reads bf16 weights, so no f32 kernels are written and
//            converted)
//
// The output is laid out for GroupConvolution with the batch folded into the groups (sample n's kernels
// are groups n*G .. n*G+G-1), and, reshaped to [N, M, C], for a batched MatMul when the conv is 1x1.
// The kernel streams W once per call whatever N is: the experts are read tile by tile (a tile stays in
// L1 while every sample's output tile is written), in parallel over tiles on OpenVINO's thread pool.
#pragma once

#include <string>

#include <openvino/op/op.hpp>

namespace dyconv_ov {

class MixKernels : public ov::op::Op {
public:
    OPENVINO_OP("MixKernels", "dyconv");

    MixKernels() = default;
    MixKernels(const ov::OutputVector& inputs, int64_t group, bool with_spatial, bool with_bias,
               bool with_channel_scale = false, std::string kernel_type = "f32");

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    int64_t group() const { return m_group; }

private:
    int64_t m_group = 1;
    bool m_with_spatial = false;
    bool m_with_bias = false;
    bool m_with_channel_scale = false;
    std::string m_kernel_type = "f32";
};

}  // namespace dyconv_ov
