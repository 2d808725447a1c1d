"""What a pipeline call returns, and the randomness of each output: one generator per image.

``per_row`` turns a caller's ``generator`` (None, one, or one per image) into what the samplers
take; ``check_call`` refuses arguments no call can take, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ImagePipelineOutput

from unitok.errors import UserError

OUTPUT_TYPES = ("pil", "np", "pt", "latent")  # "latent": the code grids themselves, [N, h, w] long
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class UniTokPipelineOutput(ImagePipelineOutput):
    """diffusers' image output, plus for drawing: ``drawn_prompts`` (per prompt, the text its
    images were drawn from: the prompt itself, or the LM's rewrite of it; OpenAI's images API calls
    it revised_prompt), ``consistency`` (per image, the model's own 0-1 score of it against its
    prompt, by the judge that picked it: ``generation.rerank``; None for edits) and ``warnings``
    (per prompt: what the model says it cannot draw, and images that do not match their prompt)."""

    drawn_prompts: list[str] | None = None
    consistency: list[float] | None = None
    warnings: list[list[str]] | None = None


def check_call(prompts: list[str], num_images_per_prompt: int, output_type: str, batch_size: int) -> None:
    if not prompts:
        raise UserError("give at least one prompt")
    if num_images_per_prompt <= 0:
        raise UserError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if batch_size <= 0:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")


def per_row(generator: Generators, rows: int) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != rows:
        raise UserError(f"got {len(generators)} generators for {rows} images: pass one per image, or a single one")
    return generators
