"""Lazy public names for packages whose modules import torch, transformers or diffusers.

A package's ``__getattr__`` built here imports a name's module on first use, so command-line
``--help`` and the command table stay free of heavy imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, public: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that resolves ``name`` from the module ``public[name]``."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(public[name]), name)

    return __getattr__
