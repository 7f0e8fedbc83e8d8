from torchvision import missing as __getattr__  # noqa: F401
