"""Grid-cell embeddings for image codes: a learned row per image cell, added to the input that
predicts that cell's code, so a small rotary LM need not count its way to the cell. Saved apart
(``image_positions.safetensors``) so the checkpoint stays a plain transformers folder. Why and
how it was measured: ``docs/sampling.md``, ``docs/results.md``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from unitok.errors import UserError
from unitok.vocabulary import UnifiedVocabulary

IMAGE_POSITIONS_FILE = "image_positions.safetensors"
ATTRIBUTE = "unitok_image_positions"
NO_SLOT = -1


def image_position_table(model: PreTrainedModel) -> torch.nn.Embedding | None:
    """The model's grid-cell table, or None for an LM without one."""
    return getattr(model, ATTRIBUTE, None)


def attach_image_positions(model: PreTrainedModel, vocab: UnifiedVocabulary, weight: torch.Tensor | None = None) -> torch.nn.Embedding:
    """Give ``model`` a table (``weight``, else a fresh one at the model's init scale); idempotent
    when it has one of the right shape already."""
    hidden = model.get_input_embeddings().embedding_dim
    shape = (vocab.tokens_per_image + 1, hidden)
    existing = image_position_table(model)
    if existing is not None and weight is None:
        if tuple(existing.weight.shape) != shape:
            raise UserError(f"the LM's image-position table is {tuple(existing.weight.shape)}, expected {shape}")
        return existing
    reference = model.get_input_embeddings().weight
    embedding = torch.nn.Embedding(*shape, device=reference.device, dtype=reference.dtype)
    if weight is None:
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        torch.nn.init.normal_(embedding.weight, std=std)
    else:
        if tuple(weight.shape) != shape:
            raise UserError(f"image-position table of shape {tuple(weight.shape)} does not fit this LM and "
                            f"vocabulary (expected {shape})")
        with torch.no_grad():
            embedding.weight.copy_(weight)
    model.add_module(ATTRIBUTE, embedding)
    return embedding


def image_slots(input_ids: torch.Tensor, vocab: UnifiedVocabulary) -> torch.Tensor:
    """``[B, L]`` slot of every position of whole sequences (left- or right-padded): a code's
    offset from the ``<|boi|>`` that opened its image, so the two images of an edit share slots."""
    is_boi = input_ids == vocab.boi_id
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last_boi = torch.where(is_boi, positions, -1).cummax(-1).values
    offset = positions - last_boi
    is_code = (input_ids >= vocab.image_offset) & (input_ids < vocab.image_offset + vocab.codebook_size)
    inside = (last_boi >= 0) & (offset <= vocab.tokens_per_image) & (is_code | is_boi)
    return offset.masked_fill(~inside, NO_SLOT)


def next_image_slots(previous: torch.Tensor, ids: torch.Tensor, vocab: UnifiedVocabulary) -> torch.Tensor:
    """``[B]`` slots of ``ids`` appended one per row after tokens whose slots were ``previous``."""
    is_code = (ids >= vocab.image_offset) & (ids < vocab.image_offset + vocab.codebook_size)
    follows = is_code & (previous >= 0) & (previous < vocab.tokens_per_image)
    following = torch.where(follows, previous + 1, NO_SLOT)
    return torch.where(ids == vocab.boi_id, 0, following)


def embed_with_positions(model: PreTrainedModel, input_ids: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Token embeddings plus, where ``slot >= 0``, the table's row for that slot."""
    embeddings = model.get_input_embeddings()(input_ids)
    positions = image_position_table(model)
    if positions is None:
        return embeddings
    rows = positions(slot.clamp(min=0)) * (slot >= 0).unsqueeze(-1).to(embeddings.dtype)
    return embeddings + rows


def lm_forward(model: PreTrainedModel, vocab: UnifiedVocabulary, input_ids: torch.Tensor, **kwargs):
    """``model(...)`` on whole sequences, with the grid-cell rows when the model has a table."""
    if image_position_table(model) is None:
        return model(input_ids=input_ids, **kwargs)
    return model(inputs_embeds=embed_with_positions(model, input_ids, image_slots(input_ids, vocab)), **kwargs)


# -- saving and loading ------------------------------------------------------------------------


@contextlib.contextmanager
def detached_image_positions(model: PreTrainedModel) -> Iterator[torch.nn.Embedding | None]:
    """Take the table off the model for the duration (the plain HF model without it)."""
    positions = image_position_table(model)
    if positions is not None:
        delattr(model, ATTRIBUTE)
    try:
        yield positions
    finally:
        if positions is not None:
            model.add_module(ATTRIBUTE, positions)


@contextlib.contextmanager
def image_positions_saved_apart(model: PreTrainedModel, directory: str | os.PathLike) -> Iterator[None]:
    """Save a plain HF checkpoint inside the block; the table, if any, goes to its own file in
    ``directory`` (callers write whole folders atomically)."""
    with detached_image_positions(model) as positions:
        yield
    if positions is not None:
        save_file({"weight": positions.weight.detach().cpu().contiguous()}, str(Path(directory) / IMAGE_POSITIONS_FILE))


def load_image_positions(model: PreTrainedModel, vocab: UnifiedVocabulary, directory: str | os.PathLike) -> None:
    """Attach the table saved in ``directory``, if there is one."""
    path = Path(directory) / IMAGE_POSITIONS_FILE
    if path.is_file():
        attach_image_positions(model, vocab, load_file(str(path))["weight"])


class DecodingSlots:
    """The slots of a KV-cached decoding run: the prompt's, then one per appended token.

    Both decoders keep them the same way; for an LM without a table nothing is tracked and the
    embeddings are the plain token embeddings.
    """

    def __init__(self, model: PreTrainedModel, vocab: UnifiedVocabulary, prompt_ids: torch.Tensor):
        self.model, self.vocab = model, vocab
        self.active = image_position_table(model) is not None
        self.prompt = image_slots(prompt_ids, vocab) if self.active else None
        self._last = self.prompt[:, -1] if self.active else None

    def append(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``[B, 1]`` slots of one appended id per row (None without a table)."""
        if not self.active:
            return None
        self._last = next_image_slots(self._last, ids.view(-1), self.vocab)
        return self._last.view(-1, 1)

    def embed(self, ids: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings of ``ids`` at ``slots`` (as given by ``prompt`` or ``append``)."""
        if not self.active:
            return self.model.get_input_embeddings()(ids)
        return embed_with_positions(self.model, ids, slots)
