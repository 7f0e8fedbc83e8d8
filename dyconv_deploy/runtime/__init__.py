"""Run stage: backends behind one small interface (PyTorch, ONNX Runtime, TensorRT)."""
