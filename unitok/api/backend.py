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
from unitok.lm.sequences import image_segment_length
from unitok.lm.text_tokenizer import encode_text


@dataclass(frozen=True)
class DrawJob:
    """One image to draw. A request for n images becomes n jobs (seeds seed, seed+1, ...)."""

    prompt: str
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class CaptionJob:
    """One image to describe; ``temperature`` 0 is greedy (then ``seed`` is unused)."""

    image: Image.Image
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class AnswerJob:
    """One question about one image (answers are greedy)."""

    image: Image.Image
    question: str


@dataclass(frozen=True)
class EditJob:
    """One edit of one image; ``temperature`` 0 is the greedy (most likely) edit, None the
    model's default edit settings."""

    image: Image.Image
    instruction: str
    temperature: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class DrawnImage:
    image: Image.Image
    drawn_prompt: str  # what it was drawn from: the job's prompt, or the model's rewrite of it
    consistency: float  # the model's own score of the image against the prompt, 0-1
    warnings: list[str]  # what the model cannot draw of the prompt, or that the image matches it poorly


class ModelBackend(Protocol):
    name: str
    default_guidance_scale: float
    image_size: int  # the model reads and draws image_size x image_size pixels
    max_caption_tokens: int
    can_answer: bool
    can_edit: bool
    edits_sample: bool  # the model's default edit samples: different seeds give different edits

    def check_prompt(self, prompt: str) -> None:
        """Raise ``UserError`` if the model cannot take ``prompt`` (a prompt, question or
        instruction; checked before batching, so one bad text never fails the rest of its batch)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Text tokens of ``text`` as the model's tokenizer encodes it (for ``usage``)."""
        ...

    def reading_tokens(self, question: str | None = None) -> int:
        """Positions the model reads for one image (and a question about it) before it writes."""
        ...

    def caption_batch(self, jobs: list[CaptionJob]) -> list[str]:
        """One caption per job, in order. Batching must not change a caption."""
        ...

    def answer_batch(self, jobs: list[AnswerJob]) -> list[str]:
        """One answer per job, in order (only when ``can_answer``)."""
        ...

    def edit_batch(self, jobs: list[EditJob]) -> list[Image.Image]:
        """One edited image per job, in order (only when ``can_edit``); depends on the job only."""
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
        self.image_size = int(pipeline.image_tokenizer.image_size)
        self.can_answer = pipeline.vocabulary.has("answer")
        self.can_edit = pipeline.vocabulary.has("edit")
        self.edits_sample = self.can_edit and not pipeline.edit_settings().options.greedy
        pipeline.set_progress_bar_config(disable=True)

    def check_prompt(self, prompt: str) -> None:
        """Raise ``UserError`` for a prompt the model cannot take (before it joins a batch)."""
        self.pipeline.encode_prompt(prompt)

    def count_tokens(self, text: str) -> int:
        return len(encode_text(self.pipeline.text_tokenizer, text))

    def reading_tokens(self, question: str | None = None) -> int:
        # [bos] <boi> codes <eoi>, then for a question: its ids and <|answer|>.
        question_tokens = 0 if question is None else self.count_tokens(question) + 1
        return image_segment_length(self.pipeline.vocabulary) + question_tokens

    def caption_batch(self, jobs: list[CaptionJob]) -> list[str]:
        # One pipeline call per setting; a sampled caption has its own seeded stream, so it does
        # not depend on its batch either.
        captions: dict[int, str] = {}
        for settings, indices in _groups(jobs, lambda job: (job.max_tokens, job.temperature, job.top_p)).items():
            max_tokens, temperature, top_p = settings
            generators = [torch.Generator().manual_seed(jobs[i].seed) for i in indices] if temperature > 0 else None
            texts = self.pipeline.caption([jobs[i].image for i in indices], max_new_tokens=max_tokens,
                                          temperature=temperature, top_p=top_p, generator=generators,
                                          batch_size=len(indices))
            captions.update(zip(indices, texts, strict=True))
        return [captions[i] for i in range(len(jobs))]

    def answer_batch(self, jobs: list[AnswerJob]) -> list[str]:
        return self.pipeline.answer([job.image for job in jobs], [job.question for job in jobs], batch_size=len(jobs))

    def edit_batch(self, jobs: list[EditJob]) -> list[Image.Image]:
        edited: dict[int, Image.Image] = {}
        for (temperature,), indices in _groups(jobs, lambda job: (job.temperature,)).items():
            generators = [torch.Generator().manual_seed(jobs[i].seed) for i in indices]
            images = self.pipeline.edit([jobs[i].image for i in indices], [jobs[i].instruction for i in indices],
                                        temperature=temperature, generator=generators, batch_size=len(indices)).images
            edited.update(zip(indices, images, strict=True))
        return [edited[i] for i in range(len(jobs))]

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
        return [DrawnImage(self.pipeline.decode_codes(codes[i : i + 1])[0], drawn.drawn_prompts[i],
                           drawn.consistency[i], drawn.warnings[i])
                for i in range(len(jobs))]


def _groups(jobs: list, key) -> dict[tuple, list[int]]:
    """Indices of ``jobs`` by ``key(job)``, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(key(job), []).append(i)
    return groups


def load_backend(model_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None,
                 max_caption_tokens: int = 64) -> PipelineBackend:
    """Load a saved pipeline folder for serving; the model's name is the folder's name."""
    folder = Path(model_dir).resolve()
    pipeline = UniTokPipeline.from_pretrained(folder)
    pipeline.configure_runtime(device, dtype)  # logs how it runs; raises UserError for an unusable device
    return PipelineBackend(pipeline, name=folder.name, max_caption_tokens=max_caption_tokens)
