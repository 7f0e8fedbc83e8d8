"""Build stage: TensorRT engines and the DynamicConv2d plugin library."""
