import enum

from torchvision import missing as __getattr__  # noqa: F401


class InterpolationMode(enum.Enum):  # timm maps its members to names at import time
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
