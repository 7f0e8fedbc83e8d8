// The OpenVINO extension library of dyconv-deploy: core.add_extension(path) before core.read_model(onnx)
// makes the ONNX frontend convert every dyconv::DynamicConv2d node (dynamic_conv_conversion.cpp) and
// registers the MixKernels operation it uses (mix_kernels.hpp), so models also serialize to IR and back.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>

#include "dynamic_conv_conversion.hpp"
#include "mix_kernels.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<dyconv_ov::MixKernels>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("DynamicConv2d", "dyconv",
                                                              dyconv_ov::convert_dynamic_conv2d),
}));
