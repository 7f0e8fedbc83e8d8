"""Dynamic-convolution layers, each laid out as the ``dyconv::DynamicConv2d`` contract."""

from dyconv_deploy.nn.base import DynamicConvBase, Routing
from dyconv_deploy.nn.cond_conv import CondConv2d
from dyconv_deploy.nn.dynamic_conv import DynamicConv2d
from dyconv_deploy.nn.dynet_conv import DyNetConv2d
from dyconv_deploy.nn.dyrelu import DyReLU
from dyconv_deploy.nn.odconv import ODConv2d
from dyconv_deploy.nn.temperature import annealed_temperature, set_temperature

__all__ = ["CondConv2d", "DyNetConv2d", "DyReLU", "DynamicConv2d", "DynamicConvBase", "ODConv2d", "Routing",
           "annealed_temperature", "set_temperature"]
