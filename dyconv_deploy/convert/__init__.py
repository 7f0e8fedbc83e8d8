"""Convert stage: replace foreign dynamic-conv modules by canonical ``dyconv_deploy.nn`` layers.

``convert_model(model, example_input)`` returns the converted copy and a
:class:`ConversionReport` (path, family, K, max error per replacement, plus the dynamic convs
no adapter recognised). Write an adapter for a new family by subclassing :class:`Adapter`
(see README "Bring your own model").
"""

from dyconv_deploy.convert.converter import ConversionReport, ConvertedModule, convert_model
from dyconv_deploy.convert.detect import UnknownDynamicConv, find_dynamic_convs
from dyconv_deploy.convert.registry import (ENTRY_POINT_GROUP, Adapter, builtin_adapters, load_adapter,
                                            register)
from dyconv_deploy.convert.routed import RoutedConv2d

__all__ = ["ENTRY_POINT_GROUP", "Adapter", "ConversionReport", "ConvertedModule", "RoutedConv2d",
           "UnknownDynamicConv", "builtin_adapters", "convert_model", "find_dynamic_convs", "load_adapter",
           "register"]
