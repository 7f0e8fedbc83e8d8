// The ONNX frontend conversion of dyconv::DynamicConv2d (see dynamic_conv_conversion.cpp).
#pragma once

#include <openvino/core/node_vector.hpp>
#include <openvino/frontend/node_context.hpp>

namespace dyconv_ov {

// The OpenVINO outputs of one dyconv::DynamicConv2d node (contract version 1).
ov::OutputVector convert_dynamic_conv2d(const ov::frontend::NodeContext& context);

}  // namespace dyconv_ov
