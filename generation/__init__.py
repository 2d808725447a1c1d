"""Sampling and rendering: batched-CFG image-code sampling, captioning, the diffusers pipeline.

Public names are imported lazily, so ``unitok generate --help`` and the command table do not
import torch, transformers or diffusers.
"""

from __future__ import annotations

from unitok.lazy_exports import lazy_getattr

_PUBLIC = {
    "UniTokPipeline": "generation.pipeline",
    "DrawSettings": "generation.settings",
    "SamplingOptions": "generation.settings",
    "sample_image_codes": "generation.sampler",
    "generate_captions": "generation.sampler",
    "rerank": "generation.rerank",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("generation", _PUBLIC)
