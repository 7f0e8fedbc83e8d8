"""Export stage: canonical model -> ONNX with one dyconv::DynamicConv2d node per dynamic conv."""
