"""UniTok: one autoregressive LM that reads and draws images through a shared discrete vocabulary.

``from unitok import UniTokPipeline`` is the entry point for Python users; it is imported lazily,
so ``unitok --help`` and the command table import no torch, transformers or diffusers.
"""

from __future__ import annotations

from unitok.lazy_exports import lazy_getattr

# The name on PyPI ("unitok" there is an unrelated package); the import name stays ``unitok``.
DISTRIBUTION = "unitok-lm"

_PUBLIC = {"UniTokPipeline": "generation.pipeline"}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("unitok", _PUBLIC)
