"""Load stage: a MODEL spec (``file.py:factory``, ``pkg.module:factory``, ``sample:NAME``, checkpoints) -> ``nn.Module``;
and :mod:`~dyconv_deploy.io.artifacts`, the atomic writes every later stage uses.

``load_model`` and ``default_input_shape`` are imported on first use, so that importing
``dyconv_deploy.io.artifacts`` (the CLI does at start) does not import torch.
"""

__all__ = ["default_input_shape", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from dyconv_deploy.io import model_spec

        return getattr(model_spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
