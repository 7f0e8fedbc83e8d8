"""Choices and defaults of the export stage, importable without torch (the CLI shows them in --help)."""

STRATEGIES = ("plugin", "experts", "grouped", "static")
# auto: per dynamic layer, the exact strategy that runs fastest on the target engine (timed, cached)
AUTO_STRATEGY = "auto"
EXPORT_STRATEGIES = (*STRATEGIES, AUTO_STRATEGY)
# Exporter -> (lowest, highest) opset of the default ONNX domain it emits (torch 2.13).
EXPORTER_OPSETS = {"dynamo": (18, 23), "torchscript": (17, 20)}
# auto: the TorchScript trace (a few seconds) when it is batch-independent and the opset allows, else dynamo
# (about 5x slower on an ImageNet network); both give the same graph (tests/export/test_samples_export.py).
AUTO_EXPORTER = "auto"
AUTO_ORDER = ("torchscript", "dynamo")
EXPORTER_CHOICES = (AUTO_EXPORTER, *EXPORTER_OPSETS)
DEFAULT_EXPORTER = AUTO_EXPORTER
DEFAULT_OPSET = 18
DEFAULT_BATCHES = (1, 4)
# What verify runs a file on: auto, or a runtime backend (dyconv_deploy.runtime.BACKENDS but torch).
VERIFY_BACKENDS = ("auto", "reference", "ort-cpu", "ort-cuda", "ort-trt", "openvino", "trt")
EXPORT_TARGETS = ("any", "ort-trt")  # ort-trt: contract nodes as ONNX Runtime's TensorRT provider wants them
