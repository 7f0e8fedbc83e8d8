"""Where dyconv-deploy caches what it builds (exported graphs, engines, the OpenVINO extension)."""

import os
from pathlib import Path

CACHE_ENV = "DYCONV_DEPLOY_CACHE"


def default_cache_dir() -> Path:
    """``$DYCONV_DEPLOY_CACHE``, else ``~/.cache/dyconv-deploy``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dyconv-deploy")
