"""A stand-in for the few torchvision names timm imports, so timm runs where no torchvision imports.

The real torchvision cannot be installed beside the pinned CPU torch (its wheel is built against
another torch, and pulls one). timm imports its ops, datasets and transforms at import time but
builds its models without them. ``tests/convert/test_timm.py`` puts this folder on ``sys.path`` only
when no torchvision is installed. Every name resolves to a class that cannot be instantiated, so
any use of the stand-in fails loudly instead of computing something.
"""


def missing(name: str) -> type:
    """Module ``__getattr__`` for the stand-in modules: a class that refuses to be used."""
    if name.startswith("__"):
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"torchvision.{name} is a test stand-in (tests/convert/stubs): install torchvision")

    return type(name, (), {"__init__": refuse})


__getattr__ = missing
