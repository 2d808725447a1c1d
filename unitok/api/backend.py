"""What the server needs from a model, and the adapter that gives it from ``UniTokPipeline``.

The server (batching, limits, auth, logging) only talks to ``ModelBackend``; the adapter is the
one place that knows how the pipeline is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from generation.pipeline import UniTokPipeline


@dataclass(frozen=True)
class DrawJob:
    """One image to draw. A request for n images becomes n jobs (seeds seed, seed+1, ...)."""

    prompt: str
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class DrawnImage:
    image: Image.Image
    drawn_prompt: str  # what it was drawn from: the job's prompt, or the model's rewrite of it


class ModelBackend(Protocol):
    name: str
    default_guidance_scale: float

    def check_prompt(self, prompt: str) -> None:
        """Raise ``UserError`` if the model cannot take ``prompt`` (checked before batching, so one
        bad prompt never fails the other requests of its batch)."""
        ...

    def caption_batch(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order. Batching must not change a caption."""
        ...

    def draw_batch(self, jobs: list[DrawJob]) -> list[DrawnImage]:
        """One image per job, in order; a job's image depends only on the job, not its batch."""
        ...


class PipelineBackend:
    """``ModelBackend`` over a ``UniTokPipeline``: greedy captions, per-image seeded drawing.

    Each drawn image gets its own ``torch.Generator`` seeded from its job, so an image depends on
    its prompt, scale and seed only, never on which other requests shared its batch.
    """

    def __init__(self, pipeline: UniTokPipeline, name: str, max_caption_tokens: int = 64) -> None:
        self.pipeline = pipeline
        self.name = name
        self.max_caption_tokens = max_caption_tokens
        # The model's own default, so the API and the Python API agree without a second copy.
        self.default_guidance_scale = float(pipeline.config.default_guidance_scale)
        pipeline.set_progress_bar_config(disable=True)

    def check_prompt(self, prompt: str) -> None:
        """Raise ``UserError`` for a prompt the model cannot take (before it joins a batch)."""
        self.pipeline.encode_prompt(prompt)

    def caption_batch(self, images: list[Image.Image]) -> list[str]:
        return self.pipeline.caption(images, max_new_tokens=self.max_caption_tokens, batch_size=len(images))

    def draw_batch(self, jobs: list[DrawJob]) -> list[DrawnImage]:
        drawn = self.pipeline(
            [job.prompt for job in jobs],
            guidance_scale=[job.guidance_scale for job in jobs],
            generator=[torch.Generator().manual_seed(job.seed) for job in jobs],
            batch_size=len(jobs),
            output_type="latent",
        )
        codes = drawn.images
        # Codes do not depend on the batch, but the conv decoder's float sums do (by ~1e-6, which
        # flips a rounded pixel now and then). Decoding each image alone keeps "same seed, same
        # PNG" exact; sampling, not decoding, is where the time goes.
        return [DrawnImage(self.pipeline.decode_codes(codes[i : i + 1])[0], drawn.drawn_prompts[i])
                for i in range(len(jobs))]


def load_backend(model_dir: str | os.PathLike, device: str | None = None,
                 max_caption_tokens: int = 64) -> PipelineBackend:
    """Load a saved pipeline folder for serving; the model's name is the folder's name."""
    folder = Path(model_dir).resolve()
    pipeline = UniTokPipeline.from_pretrained(folder)
    pipeline.configure_runtime(device)  # logs how it runs; raises UserError for an unusable device
    return PipelineBackend(pipeline, name=folder.name, max_caption_tokens=max_caption_tokens)
