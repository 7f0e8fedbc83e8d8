"""Choices and defaults of the export stage, importable without torch (the CLI shows them in --help)."""

STRATEGIES = ("plugin", "experts", "grouped", "static")
# Exporter -> (lowest, highest) opset of the default ONNX domain it emits (torch 2.13).
EXPORTER_OPSETS = {"dynamo": (18, 23), "torchscript": (17, 20)}
DEFAULT_OPSET = 18
DEFAULT_BATCHES = (1, 4)
# What verify runs a file on: auto, or a runtime backend (dyconv_deploy.runtime.BACKENDS but torch).
VERIFY_BACKENDS = ("auto", "reference", "ort-cpu", "ort-cuda", "ort-trt", "openvino", "trt")
