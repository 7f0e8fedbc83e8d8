"""Export stage: canonical model -> ONNX with one ``dyconv::DynamicConv2d`` node per dynamic conv, and its check."""

from dyconv_deploy.export.onnx_export import EXPORTERS, ExportError, check_model, contract_nodes, export_onnx

__all__ = ["EXPORTERS", "ExportError", "check_model", "contract_nodes", "export_onnx"]
