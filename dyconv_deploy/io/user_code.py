"""Run the user's Python code as ``python -m`` would: their folders importable while it runs.

A console script's ``sys.path`` starts with its own ``bin/`` folder, not the current one, so
``dyconv-deploy export mypkg.models:build`` or a trusted pickle of ``mynet.Net`` would not find
code that ``python -c`` finds. :func:`user_code_path` adds the current folder (and any others
given) for the duration of a block; :func:`load_python_file` executes a ``file.py`` with its
folder importable.
"""

import hashlib
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

from dyconv_deploy.errors import DyconvError


@contextmanager
def user_code_path(*folders: str | Path) -> Iterator[None]:
    """Put the current folder and ``folders`` first on ``sys.path`` inside the block (removed after)."""
    added = [entry for entry in dict.fromkeys(str(Path(f).resolve()) for f in (Path.cwd(), *folders))
             if entry not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def load_python_file(path: str | Path, kind: str) -> ModuleType:
    """Execute ``path`` as a module registered in ``sys.modules`` (so its classes pickle and dataclasses work).

    ``kind`` names the module (``_dyconv_<kind>_<stem>_<hash of the path>``); a missing file is a
    :class:`DyconvError`.
    """
    file = Path(path)
    if not file.is_file():
        raise DyconvError(f"{kind} file not found: {path}")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    module_name = f"_dyconv_{kind}_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with user_code_path(file.parent):
        spec.loader.exec_module(module)
    return module
