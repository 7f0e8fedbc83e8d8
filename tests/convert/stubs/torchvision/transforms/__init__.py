from torchvision import missing as __getattr__  # noqa: F401
from torchvision.transforms import functional  # noqa: F401
