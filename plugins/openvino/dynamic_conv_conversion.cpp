// ONNX frontend conversion of dyconv::DynamicConv2d (contract version 1) into OpenVINO operations:
//
//   Wn, Bn = MixKernels(A, W[, S][, B][, T])           [N*G, M/G, C/G, kH, kW], [N, M, 1, 1] (the project's kernel)
//   Y  = per-sample convolutions (oneDNN), by what the reader knows of the batch N:
//        N = 1              GroupConvolution(X, Wn)
//        static N <= 16     Concat_n GroupConvolution(X[n], Wn[n])  (Split along N: the convolutions keep
//                           oneDNN's channels-last layout; at batch 8 against the folded route, which reorders
//                           X and Y every layer: DY-MobileNetV2 as fast in f32, -15% in bf16, DY-ResNet-18 -35%)
//        larger/dynamic N   GroupConvolution(X as [1, N*C, H, W], Wn) as [N, M, Ho, Wo] (batch folded into
//                           the groups), or for an unpadded stride-1 1x1 conv with G = 1
//                           MatMul(Wn as [N, M, C], X as [N, C, H*W])
//        (the runtime compiles a graph per input shape, so N is static there; a model read with a dynamic
//        batch takes the folded route)
//   Y += Bn                                       (Bn[n] = sum_k A[n,k(,m)] B[k(,m)], mixed in the same op)
//   X  = X0 * T[:, :, None, None]                 (ODConv's input-channel attention, an [N, C, 1, 1] scale of
//                                                  a static batch: folded into the kernels, MixKernels' input
//                                                  T, exact as conv(X0 * T, Wn) = conv(X0, Wn * T[c]); no pass
//                                                  over the activation: ODConv-MobileNetV2 6-10% faster)
//   Y += B[0][None, :, None, None]                (instead, when every expert has the same bias and A is a
//                                                  softmax over K: sum_k A[n,k] B[0] = B[0]; a constant bias
//                                                  that OpenVINO fuses into the convolution, as after a
//                                                  BatchNorm folded into bias-free experts)
//
// On the folded route the batch stays dynamic: every reshape copies or infers N. Only the expert mixing is custom; the
// convolutions are OpenVINO's own, which measured faster than a hand-written conv here.
#include "dynamic_conv_conversion.hpp"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <openvino/op/add.hpp>
#include <openvino/op/concat.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/gather.hpp>
#include <openvino/op/group_conv.hpp>
#include <openvino/op/matmul.hpp>
#include <openvino/op/multiply.hpp>
#include <openvino/op/reshape.hpp>
#include <openvino/op/shape_of.hpp>
#include <openvino/op/softmax.hpp>
#include <openvino/op/split.hpp>

#include "mix_kernels.hpp"

namespace dyconv_ov {
namespace {

using ov::Output;
using ov::Node;

// Largest static batch convolved sample by sample; a larger or dynamic batch is folded into the groups.
constexpr int64_t kMaxUnrolledBatch = 16;

std::shared_ptr<ov::op::v0::Constant> ints(const std::vector<int64_t>& values) {
    return ov::op::v0::Constant::create(ov::element::i64, ov::Shape{values.size()}, values);
}

// The ONNX frontend passes an empty optional input ("") as a placeholder node of its own.
bool is_absent(const Output<Node>& input) {
    return std::string(input.get_node()->get_type_name()) == "NullNode";
}

std::vector<int64_t> attribute(const ov::frontend::NodeContext& context, const std::string& name,
                               std::vector<int64_t> fallback) {
    const auto values = context.get_attribute<std::vector<int64_t>>(name, fallback);
    const size_t expected = name == "pads" ? 4 : 2;
    if (values.size() != expected) {
        OPENVINO_THROW("dyconv::DynamicConv2d: attribute '", name, "' needs ", expected, " values, got ",
                       values.size());
    }
    for (const auto v : values) {
        if (v < (name == "pads" ? 0 : 1)) OPENVINO_THROW("dyconv::DynamicConv2d: invalid '", name, "' value ", v);
    }
    return values;
}

// Y [N, M, H, W] from MatMul(Wn [N, M, C], X [N, C, H*W]) for an unpadded stride-1 1x1 conv without groups.
Output<Node> pointwise(const Output<Node>& x, const Output<Node>& kernels, int64_t m, int64_t c) {
    using namespace ov::op;
    const auto w = std::make_shared<v1::Reshape>(kernels, ints({-1, m, c}), false);
    const auto flat = std::make_shared<v1::Reshape>(x, ints({0, c, -1}), true);
    const auto y = std::make_shared<v0::MatMul>(w, flat);
    const auto x_shape = std::make_shared<v3::ShapeOf>(x);
    const auto batch = std::make_shared<v8::Gather>(x_shape, ints({0}), ints({0}));
    const auto plane = std::make_shared<v8::Gather>(x_shape, ints({2, 3}), ints({0}));
    const auto shape = std::make_shared<v0::Concat>(ov::OutputVector{batch, ints({m}), plane}, 0);
    return std::make_shared<v1::Reshape>(y, shape, false);
}

// True when A [N, K] is a softmax over K, so its rows sum to 1.
bool sums_to_one(const Output<Node>& attention) {
    const auto& shape = attention.get_partial_shape();
    if (shape.rank().is_dynamic() || shape.size() != 2) return false;
    const auto node = attention.get_node_shared_ptr();
    if (const auto softmax = ov::as_type_ptr<ov::op::v8::Softmax>(node)) {
        return softmax->get_axis() == 1 || softmax->get_axis() == -1;
    }
    if (const auto softmax = ov::as_type_ptr<ov::op::v1::Softmax>(node)) return softmax->get_axis() == 1;
    return false;
}

// B[0] as a [1, M, 1, 1] constant when B [K, M] is a constant whose K rows are equal; null otherwise.
std::shared_ptr<Node> shared_bias(const Output<Node>& bias) {
    const auto constant = ov::as_type_ptr<ov::op::v0::Constant>(bias.get_node_shared_ptr());
    if (!constant || constant->get_element_type() != ov::element::f32 || constant->get_shape().size() != 2) {
        return nullptr;
    }
    const auto values = constant->cast_vector<float>();
    const size_t m = constant->get_shape()[1];
    for (size_t i = m; i < values.size(); ++i) {
        if (values[i] != values[i % m]) return nullptr;
    }
    const std::vector<float> row(values.begin(), values.begin() + m);
    return ov::op::v0::Constant::create(ov::element::f32, ov::Shape{1, m, 1, 1}, row);
}

// X0 and T [N, C] when x = X0 * T[:, :, None, None] with an f32 scale T of X0's static batch (ODConv's input-
// channel attention; a constant scale folds as well); nullopt otherwise (then the Multiply stays OpenVINO's).
std::optional<std::pair<Output<Node>, Output<Node>>> channel_scaled(const Output<Node>& x) {
    const auto multiply = ov::as_type_ptr<ov::op::v1::Multiply>(x.get_node_shared_ptr());
    if (!multiply || multiply->get_autob().m_type != ov::op::AutoBroadcastType::NUMPY) return std::nullopt;
    for (size_t i = 0; i < 2; ++i) {
        const auto input = multiply->input_value(i), scale = multiply->input_value(1 - i);
        const auto &x_shape = input.get_partial_shape(), &s_shape = scale.get_partial_shape();
        if (!x_shape.is_static() || !s_shape.is_static() || x_shape.size() != 4 || s_shape.size() != 4 ||
            scale.get_element_type() != ov::element::f32 || s_shape[0] != x_shape[0] ||
            s_shape[1] != x_shape[1] || s_shape[2] != 1 || s_shape[3] != 1) {
            continue;
        }
        const auto rows = std::make_shared<ov::op::v1::Reshape>(scale, ints({0, -1}), true);
        return std::make_pair(input, rows->output(0));
    }
    return std::nullopt;
}

}  // namespace

ov::OutputVector convert_dynamic_conv2d(const ov::frontend::NodeContext& context) {
    using namespace ov::op;
    const size_t count = context.get_input_size();
    if (count < 3 || count > 5) {
        OPENVINO_THROW("dyconv::DynamicConv2d takes 3 to 5 inputs (X, A, W[, B][, S]); got ", count);
    }
    const auto attention = context.get_input(1), weight = context.get_input(2);
    const auto channel_scale = channel_scaled(context.get_input(0));
    const auto x = channel_scale ? channel_scale->first : context.get_input(0);
    const auto optional = [&](size_t i) { return i < count && !is_absent(context.get_input(i)); };
    const auto strides = attribute(context, "strides", {1, 1});
    const auto pads = attribute(context, "pads", {0, 0, 0, 0});
    const auto dilations = attribute(context, "dilations", {1, 1});
    const auto group = context.get_attribute<int64_t>("group", 1);

    const auto& w_shape = weight.get_partial_shape();
    if (!w_shape.is_static() || w_shape.size() != 5) {
        OPENVINO_THROW("dyconv::DynamicConv2d: W must have the static shape [K, M, C/G, kH, kW]; got ", w_shape);
    }
    const auto& x_shape = x.get_partial_shape();
    const int64_t m = w_shape[1].get_length(), c_per_group = w_shape[2].get_length();
    if (x_shape.rank().is_static() && (x_shape.size() != 4 ||
                                       !x_shape[1].compatible(c_per_group * group))) {
        OPENVINO_THROW("dyconv::DynamicConv2d: X ", x_shape, " must be [N, C, H, W] with C = group * C/G = ",
                       group * c_per_group);
    }

    const bool spatial = optional(4);
    const auto constant_bias = optional(3) && sums_to_one(attention) ? shared_bias(context.get_input(3)) : nullptr;
    const bool bias = optional(3) && !constant_bias;
    ov::OutputVector mix_inputs{attention, weight};
    if (spatial) mix_inputs.push_back(context.get_input(4));
    if (bias) mix_inputs.push_back(context.get_input(3));
    if (channel_scale) mix_inputs.push_back(channel_scale->second);
    const auto mix = std::make_shared<MixKernels>(mix_inputs, group, spatial, bias, channel_scale.has_value());
    const Output<Node> kernels = mix->output(0);

    const auto conv = [&](const Output<Node>& input, const Output<Node>& filters) -> Output<Node> {
        return std::make_shared<v1::GroupConvolution>(
            input, filters, ov::Strides(strides.begin(), strides.end()), ov::CoordinateDiff{pads[0], pads[1]},
            ov::CoordinateDiff{pads[2], pads[3]}, ov::Strides(dilations.begin(), dilations.end()));
    };
    const int64_t batch = x_shape.rank().is_static() && x_shape[0].is_static() ? x_shape[0].get_length() : -1;
    const bool unpadded_1x1 = w_shape[3] == 1 && w_shape[4] == 1 && strides == std::vector<int64_t>{1, 1} &&
                              pads == std::vector<int64_t>{0, 0, 0, 0};
    Output<Node> y;
    if (batch == 1) {
        y = conv(x, kernels);
    } else if (batch > 1 && batch <= kMaxUnrolledBatch) {
        // One convolution per sample: they keep oneDNN's channels-last layout, where a batch folded into the
        // groups costs two activation reorders per layer (at batch 8: DY-MobileNetV2 as fast in f32, -15% in bf16;
        // DY-ResNet-18 -35%).
        const auto axis = v0::Constant::create(ov::element::i64, ov::Shape{}, {0});
        const auto x_split = std::make_shared<v1::Split>(x, axis, batch);
        const auto k_split = std::make_shared<v1::Split>(kernels, axis, batch);
        ov::OutputVector samples;
        for (int64_t n = 0; n < batch; ++n) samples.push_back(conv(x_split->output(n), k_split->output(n)));
        y = std::make_shared<v0::Concat>(samples, 0);
    } else if (unpadded_1x1 && group == 1) {
        y = pointwise(x, kernels, m, c_per_group);
    } else {
        y = std::make_shared<v1::Reshape>(conv(std::make_shared<v1::Reshape>(x, ints({1, -1, 0, 0}), true), kernels),
                                          ints({-1, m, 0, 0}), true);
    }
    if (bias) {
        y = std::make_shared<v1::Add>(y, mix->output(1));
    } else if (constant_bias) {
        y = std::make_shared<v1::Add>(y, constant_bias);
    }
    return {y};
}

}  // namespace dyconv_ov
