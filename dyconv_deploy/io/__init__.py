"""Load stage: a MODEL spec (``file.py:factory``, ``pkg.module:factory``, ``sample:NAME``, checkpoints) -> ``nn.Module``."""

from dyconv_deploy.io.model_spec import load_model

__all__ = ["load_model"]
