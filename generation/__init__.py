"""Sampling and rendering: batched-CFG image-code sampling, captioning, the diffusers pipeline.

Public names are imported lazily, so ``unitok generate --help`` and the command table do not
import torch, transformers or diffusers.
"""

from __future__ import annotations

from unitok.lazy_exports import lazy_getattr

_PUBLIC = {
    "UniTokPipeline": "generation.pipeline",
    "SamplingOptions": "generation.token_choice",
    "sample_image_codes": "generation.sampler",
    "generate_captions": "generation.sampler",
    "default_model_dir": "generation.default_model",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("generation", _PUBLIC)
