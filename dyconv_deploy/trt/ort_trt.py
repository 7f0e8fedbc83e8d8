"""``dyconv::DynamicConv2d`` for ONNX Runtime's TensorRT execution provider (backend ``ort-trt``).

The TensorRT EP (onnxruntime ``core/providers/tensorrt/tensorrt_execution_provider_custom_ops.cc``)
registers every plugin creator in TensorRT's plugin registry as an ONNX Runtime custom op of the
domain ``trt.plugins``, named after the creator (``getPluginName``), with variadic inputs and
outputs; the subgraph then goes to TensorRT's ONNX parser, which finds the creator by op_type and
the ``plugin_version``/``plugin_namespace`` attributes. IPluginV3 creators are listed since
onnxruntime 1.22 (``getAllCreators``, microsoft/onnxruntime#24211); older releases list V2
creators only. So the graph needs the node as ``trt.plugins::DynamicConv2d`` with the plugin
attributes of the ``plugin`` lowering: :func:`to_ort_trt`.

The EP's ``trt_extra_plugin_lib_paths`` only ``dlopen`` s each library, which registers creators
of libraries that register themselves on load (``REGISTER_TENSORRT_PLUGIN``); ours exports
``getCreators`` instead, so :func:`dyconv_deploy.trt.build.load_plugin_library` registers it
through the ``tensorrt`` package first, in the same process and before the first TensorRT EP
session (the EP reads the registry once per process).
"""

import onnx

from dyconv_deploy.lower.plugin import lower_plugin
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE

ORT_TRT_DOMAIN = "trt.plugins"
ORT_TRT_DOMAIN_VERSION = 1


def to_ort_trt(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose contract nodes are ``trt.plugins::DynamicConv2d`` with the plugin attributes.

    ``model`` is any graph with ``dyconv::DynamicConv2d`` nodes (exported, or already lowered
    with ``plugin``); the ``plugin`` lowering adds the attributes TensorRT's parser looks the
    creator up by and leaves no empty input. Other nodes are unchanged.
    """
    lowered = lower_plugin(model)
    for node in lowered.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = ORT_TRT_DOMAIN
    imports = [o for o in lowered.opset_import if o.domain not in (DOMAIN, ORT_TRT_DOMAIN)]
    del lowered.opset_import[:]
    lowered.opset_import.extend([*imports, onnx.helper.make_opsetid(ORT_TRT_DOMAIN, ORT_TRT_DOMAIN_VERSION)])
    return lowered
