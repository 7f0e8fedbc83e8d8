"""Stage layering: each part of ``dyconv_deploy`` imports only the parts below it (DESIGN.md, "Pipeline").

The order, lowest first, is :data:`LAYERS`::

    (shared modules) < ops < nn < analysis < samples < io < convert < export < lower < trt < runtime
                     < verify < bench < workflow

The shared modules (:data:`SHARED`: errors, deps, tolerance, cache, native, inputs and the package's
``__init__``) sit below every stage and import only each other. A stage may import itself, the
shared modules and the stages before it; nothing in the library imports ``dyconv_deploy.cli``.
Every ``import`` statement counts, also the lazy ones inside functions. The check reads the
sources with :mod:`ast` and imports nothing, so it costs milliseconds.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dyconv_deploy"
LAYERS = ("ops", "nn", "analysis", "samples", "io", "convert", "export", "lower", "trt", "runtime", "verify",
          "bench", "workflow")
SHARED = ("__init__", "__version__", "errors", "deps", "tolerance", "cache", "native", "inputs")
# Source folders -> the layer their files belong to (samples/ installs as dyconv_deploy.samples).
SOURCES = {ROOT / PACKAGE: None, ROOT / "samples": "samples"}


def layer_of(name: str) -> str | None:
    """The layer of a ``dyconv_deploy`` part (``"export"``, ``"errors"``, ...); ``None`` for shared modules."""
    if name in SHARED:
        return None
    if name in LAYERS:
        return name
    raise AssertionError(f"dyconv_deploy.{name} is neither a layer nor a shared module: add it to test_layering")


def rank(layer: str | None) -> int:
    return -1 if layer is None else LAYERS.index(layer)


def imported_parts(tree: ast.AST, module: str) -> set[str]:
    """The ``dyconv_deploy.<part>`` names a module imports, relative imports resolved against ``module``."""
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[:-node.level]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if base == PACKAGE else base for alias in node.names]
        else:
            continue
        parts |= {name.split(".")[1] for name in names if name.startswith(PACKAGE + ".")}
    return parts


def source_files() -> list[tuple[str, str | None, str, Path]]:
    """``(path relative to the repository, layer, module name, file)`` of every library source."""
    files = []
    for folder, layer in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            if layer is None:  # inside dyconv_deploy/: the first component is the part
                part = relative.parts[0]
                module = ".".join((PACKAGE, *relative.parts))
                file_layer = layer_of(part)
            else:
                module = ".".join((PACKAGE, layer, *relative.parts))
                file_layer = layer
            files.append((path.relative_to(ROOT).as_posix(), file_layer, module, path))
    return files


def violations() -> dict[tuple[str, str], str]:
    """``(file, imported part) -> description`` of every import that reaches up or sideways into the CLI."""
    found = {}
    for relative, layer, module, path in source_files():
        for part in imported_parts(ast.parse(path.read_text(), str(path)), module):
            if part == "cli":
                found[(relative, part)] = "the library imports the CLI"
                continue
            target = layer_of(part)
            if target != layer and rank(target) >= rank(layer):
                found[(relative, part)] = f"{layer or 'a shared module'} imports {part}, a layer above it"
    return found


def test_every_part_imports_only_the_layers_below_it():
    found = violations()
    assert not found, "\n".join(f"{file}: {why}" for (file, _), why in sorted(found.items()))


@pytest.mark.parametrize("source, expected", [
    ("from dyconv_deploy.lower import lower", {"lower"}),
    ("import dyconv_deploy.runtime.base", {"runtime"}),
    ("from dyconv_deploy import __version__, ops", {"__version__", "ops"}),
    ("def f():\n    from ..lower.graph import load", {"lower"}),
    ("from .report import Checklist", {"export"}),
])
def test_imports_are_read_also_when_lazy_or_relative(source, expected):
    assert imported_parts(ast.parse(source), "dyconv_deploy.export.pipeline") == expected
