"""The registry of normalisers: one module per normaliser, each defining only its forward formula.

Every module of this package is imported and each `theory.normaliser.Normaliser` instance it
defines is registered under its `name`; adding a normaliser is adding one file here. A file kept
elsewhere (a researcher's experiment) is registered at run time by `load_normaliser_file(path)`.
Everything else (Jacobian, ||J^T g||^2, the thm4.1 analogue, statuses, numeric callables, the torch
module `empirics.norm_layers.FormulaNorm`) is derived from the formula by shared code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from theory.normaliser import Normaliser

REGISTRY: dict[str, Normaliser] = {}


def _normalisers_in(module: ModuleType) -> list[Normaliser]:
    """The Normaliser instances a module defines at top level, in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Normaliser)]


def _source_of(normaliser: Normaliser) -> str:
    return inspect.getfile(normaliser.hat)


def _register(normaliser: Normaliser, replace_same_source: bool) -> None:
    known = REGISTRY.get(normaliser.name)
    if known is not None and known is not normaliser:
        if not (replace_same_source and Path(_source_of(known)) == Path(_source_of(normaliser))):
            raise ValueError(
                f"normaliser name {normaliser.name!r} from {_source_of(normaliser)} is already registered by "
                f"{_source_of(known)}; give the new Normaliser another name="
            )
    REGISTRY[normaliser.name] = normaliser


def _discover_package() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for normaliser in _normalisers_in(module):
            _register(normaliser, replace_same_source=False)


def load_normaliser_file(path) -> list[Normaliser]:
    """Import the Python file at `path` and register every Normaliser it defines; returns them.

    Loading the same file again replaces its earlier definitions (an edited experiment); a name
    already taken by another file is an error, as is a file that defines no Normaliser.
    """
    path = Path(path).resolve()
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(f"normaliser file {path} is not an existing .py file")
    module_name = f"normcheck_user_normalisers.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so pickled results can name the module's objects
    spec.loader.exec_module(module)
    found = _normalisers_in(module)
    if not found:
        raise ValueError(f"{path} defines no theory.normaliser.Normaliser instance at top level; "
                         "define one, e.g. CENTERING = Normaliser(name=..., ...)")
    for normaliser in found:
        _register(normaliser, replace_same_source=True)
    return found


_discover_package()
BATCHNORM = REGISTRY["batchnorm"]

__all__ = ["BATCHNORM", "REGISTRY", "load_normaliser_file"]
