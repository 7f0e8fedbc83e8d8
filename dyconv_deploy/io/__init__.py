"""Load stage: a MODEL spec (``file.py:factory``, ``pkg.module:factory``, ``sample:NAME``, checkpoints) -> ``nn.Module``."""

from dyconv_deploy.io.model_spec import default_input_shape, load_model

__all__ = ["default_input_shape", "load_model"]
