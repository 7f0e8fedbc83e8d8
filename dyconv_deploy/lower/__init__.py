"""Lower stage: ONNX -> ONNX passes, one per strategy (plugin, experts, grouped, static)."""
