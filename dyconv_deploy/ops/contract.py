"""The ``dyconv::DynamicConv2d`` contract (version 1): names and shape rules in one place.

Inputs, in order (optional ones are ``""`` in ONNX when absent)::

    X  [N, C, H, W]                 activations
    A  [N, K] or [N, K, M]          attention, already normalised
    W  [K, M, C/G, kH, kW]          expert kernels
    B  [K, M]          (optional)   expert biases
    S  [N, kH, kW]     (optional)   per-sample spatial kernel attention (ODConv)

Output ``Y [N, M, Ho, Wo]`` with
``Y[n] = conv2d(X[n], (sum_k A[n,k] W[k]) * S[n], sum_k A[n,k] B[k])``; attributes
``strides``, ``pads`` (top, left, bottom, right), ``dilations``, ``group`` as ONNX Conv.
"""

DOMAIN = "dyconv"
OP_TYPE = "DynamicConv2d"
OP_VERSION = 1
TORCH_OP = "dyconv::dynamic_conv2d"
INPUT_NAMES = ("X", "A", "W", "B", "S")
OUTPUT_NAMES = ("Y",)
ATTRIBUTES = ("strides", "pads", "dilations", "group")
# TensorRT's ONNX parser finds the plugin by op_type plus these two string attributes.
PLUGIN_NAME = OP_TYPE
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
PLUGIN_ATTRIBUTES = ("plugin_version", "plugin_namespace")


def output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    """Spatial output size of a convolution along one axis (works with symbolic ints)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def normalize_padding(padding, kernel_size=None, dilation=1) -> tuple[int, int, int, int]:
    """``int`` | ``(ph, pw)`` | ``(top, left, bottom, right)`` | ``'valid'`` | ``'same'`` -> ``(top, left, bottom,
    right)``; ``'same'`` (stride 1) pads ``dilation * (k - 1)`` per axis, the odd one at the bottom / right as
    ``F.conv2d`` does, and needs ``kernel_size``."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if kernel_size is None:
            raise ValueError("padding='same' needs the kernel size")
        (th, tw) = (d * (k - 1) for d, k in zip(pair(dilation), pair(kernel_size)))
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, four ints, 'valid' or 'same'; got {padding!r}")
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return (padding[0], padding[1], padding[0], padding[1])
    if len(padding) == 4:
        return padding
    raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right); got {padding!r}")


def pair(value) -> tuple[int, int]:
    """``int`` | ``(h, w)`` -> ``(h, w)``."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return value
