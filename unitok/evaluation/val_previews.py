"""What the LM draws and says while it trains, like the tokenizer's reconstruction grids.

At the end of each validation the LM draws the captions of the first few validation samples and
captions their codes, with the sampling code the pipeline uses (``generation.sampler``): drawings
guided as the pipeline's default, each from its own fixed seed, and greedy captions, so the files
of two validations differ only because the model did. ``unitok lm fit|validate`` attach
``ValidationPreviews``; ``model.val_previews`` says how many samples (0: none).

Files, in the run's log folder: ``samples/step_{step:06d}.jsonl`` (one line per sample: ``key``,
``reference``, ``caption``) and, when the LM has ``model.image_tokenizer`` to render codes with,
``samples/step_{step:06d}.png`` (the samples' images, decoded from their codes, above the
drawings of their captions; one column per sample).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from generation.decoder import context_length
from generation.sampler import SAMPLING, generate_captions, sample_image_codes
from generation.settings import DEFAULT_GUIDANCE_SCALE
from tokenizer.images import tensor_to_pil
from tokenizer.model import VQTokenizer
from unitok.evaluation.reports import write_files
from unitok.lm.data import CodeShardDataModule
from unitok.lm.sequences import image_segment_length, prompt_room
from unitok.lm.text_tokenizer import decode_text, encode_text
from unitok.vocabulary import UnifiedVocabulary

log = logging.getLogger(__name__)

MAX_CAPTION_TOKENS = 64  # as UniTokPipeline.caption


@dataclass(frozen=True)
class Previews:
    """One validation's previews: per sample its key, reference and the model's caption; the
    samples' images and the drawings of their captions (None without an image tokenizer)."""

    records: list[dict[str, str]]
    images: list[Image.Image] | None = None
    drawings: list[Image.Image] | None = None

    def grid(self) -> Image.Image:
        """The samples' images (top row) above the drawings of their captions (bottom row)."""
        if self.images is None or self.drawings is None:
            raise ValueError("previews made without an image tokenizer have no pictures")
        width, height = self.images[0].size
        grid = Image.new("RGB", (len(self.images) * width, 2 * height))
        for column, (image, drawing) in enumerate(zip(self.images, self.drawings, strict=True)):
            grid.paste(image, (column * width, 0))
            grid.paste(drawing, (column * width, height))
        return grid

    def write(self, out_dir: str | Path, step: int) -> dict[str, Path]:
        """``step_{step:06d}.jsonl`` (and ``.png`` when there are pictures) in ``out_dir``, atomically."""
        name = f"step_{step:06d}"
        files: dict[str, Any] = {f"{name}.jsonl": "".join(json.dumps(record) + "\n" for record in self.records)}
        if self.images is not None:
            files[f"{name}.png"] = self.grid()
        return write_files(out_dir, files)


def make_previews(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    text_tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[dict[str, Any]],
    image_tokenizer: VQTokenizer | None = None,
) -> Previews:
    """Caption each sample's ``codes`` and, with ``image_tokenizer``, draw its ``caption``
    (image ``i`` from seed ``i``) and render both. ``model`` runs in eval mode and is put back in
    the mode it came in."""
    codes = torch.stack([torch.from_numpy(sample["codes"].astype("int64")) for sample in samples])
    was_training = model.training
    model.eval()
    try:
        captions = _captions(model, vocab, text_tokenizer, codes)
        drawn = None if image_tokenizer is None else _drawings(model, vocab, text_tokenizer, samples)
    finally:
        model.train(was_training)
    records = [{"key": sample["key"], "reference": sample["caption"], "caption": caption}
               for sample, caption in zip(samples, captions, strict=True)]
    if image_tokenizer is None:
        return Previews(records)
    return Previews(records, render(image_tokenizer, codes), render(image_tokenizer, drawn))


def _captions(model: PreTrainedModel, vocab: UnifiedVocabulary, text_tokenizer: PreTrainedTokenizerBase,
              codes: torch.Tensor) -> list[str]:
    context = context_length(model)
    limit = MAX_CAPTION_TOKENS if context is None else max(1, min(MAX_CAPTION_TOKENS, context - image_segment_length(vocab)))
    return [decode_text(text_tokenizer, ids) for ids in generate_captions(model, vocab, codes, max_new_tokens=limit)]


def _drawings(model: PreTrainedModel, vocab: UnifiedVocabulary, text_tokenizer: PreTrainedTokenizerBase,
              samples: Sequence[dict[str, Any]]) -> torch.Tensor:
    # A caption longer than the context leaves room for is cut there rather than refused: the
    # previews show the model, they do not police the data.
    room = prompt_room(vocab, context_length(model))
    prompts = [encode_text(text_tokenizer, sample["caption"])[:room] for sample in samples]
    generators = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
    return sample_image_codes(model, vocab, prompts, guidance_scale=DEFAULT_GUIDANCE_SCALE, options=SAMPLING,
                              generator=generators)


@torch.inference_mode()
def render(image_tokenizer: VQTokenizer, codes: torch.Tensor) -> list[Image.Image]:
    """Code grids ``[N, h, w]`` -> images, one at a time as ``UniTokPipeline.decode_codes`` does
    (the same codes give the same pixels whatever batch they came in)."""
    codes = codes.to(image_tokenizer.device)
    return tensor_to_pil(torch.cat([image_tokenizer.decode(codes[i : i + 1]) for i in range(codes.shape[0])]))


class ValidationPreviews(L.Callback):
    """Writes ``make_previews`` of the first ``model.val_previews`` validation samples into
    ``RUN/samples/`` at the end of each validation, on the first rank (the others go on and wait
    at their next synchronisation). Not during the sanity check, and not where the LM's weights
    are sharded across ranks (FSDP, DeepSpeed: one rank cannot run the model alone)."""

    def __init__(self) -> None:
        self.out_dir: Path | None = None
        self._samples: list[dict[str, Any]] | None = None  # read once: the same samples every time
        self._image_tokenizer: VQTokenizer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: ask on every rank here, not later on rank 0 only.
        self.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        count = pl_module.hparams.get("val_previews", 0)
        if not count or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            log.info("no validation previews: the LM is sharded across ranks (%s)", type(trainer.strategy).__name__)
            return
        if self._samples is None:
            data = trainer.datamodule
            self._samples = data.first_val_samples(count) if isinstance(data, CodeShardDataModule) else []
        if not self._samples:
            return
        start = time.perf_counter()
        previews = make_previews(pl_module.model, pl_module.vocabulary, pl_module.text_tokenizer, self._samples,
                                 self._load_image_tokenizer(pl_module))
        paths = previews.write(self.out_dir, trainer.global_step)
        log.info("validation previews of %d samples in %.1f s: %s", len(self._samples), time.perf_counter() - start,
                 ", ".join(str(path) for path in paths.values()))

    def _load_image_tokenizer(self, pl_module: L.LightningModule) -> VQTokenizer | None:
        folder = pl_module.hparams.get("image_tokenizer")
        if folder is None:
            return None
        if self._image_tokenizer is None:
            # fp32 whatever the LM computes in: the quantizer computes in fp32.
            self._image_tokenizer = VQTokenizer.from_pretrained(folder).eval()
        return self._image_tokenizer.to(pl_module.device)
