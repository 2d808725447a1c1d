"""Bring a UniTok LM saved with fewer special tokens up to the current layout, to train on.

A new special (``<|rewrite|>``) sits before the image codes and shifts every code id, so its rows
are inserted where the layout puts them (``draw_new_rows``) and the tokenizer is re-extended;
nothing learned changes. An old export still loads as it is for drawing and captioning.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from unitok.errors import UserError
from unitok.lm.embedding_rows import draw_new_rows
from unitok.lm.text_tokenizer import extend_tokenizer
from unitok.vocabulary import SPECIALS, UnifiedVocabulary


def add_missing_specials(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, vocab: UnifiedVocabulary, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, UnifiedVocabulary]:
    """``(model, tokenizer, vocab)`` with every special of ``SPECIALS`` the vocabulary lacks
    (the same objects back when it lacks none; the model is changed in place)."""
    missing = tuple(name for name in SPECIALS if name not in vocab.special_names)
    if not missing:
        return model, tokenizer, vocab
    upgraded = dataclasses.replace(vocab, special_names=vocab.special_names + missing)
    base = _text_tokenizer(tokenizer, vocab.text_size)
    extend_tokenizer(base, upgraded)
    _insert_rows(model, vocab.image_offset, len(missing), vocab.text_size, seed)
    return model, base, upgraded


def _text_tokenizer(tokenizer: PreTrainedTokenizerBase, text_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer without UniTok's tokens (every id from ``text_size`` on), ready to extend again."""
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise UserError("adding special tokens to a saved UniTok LM needs a fast (tokenizers-backed) tokenizer")
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["added_tokens"] = [token for token in data["added_tokens"] if token["id"] < text_size]
    base = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
    )
    if len(base) != text_size:
        raise UserError(f"cannot recover the text tokenizer: it has {len(base)} ids without UniTok's tokens, "
                        f"the vocabulary says {text_size}")
    return base


def _insert_rows(model: PreTrainedModel, at: int, count: int, text_size: int, seed: int) -> None:
    old_rows = model.get_input_embeddings().num_embeddings
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    old = [w.detach().clone() for w in weights]
    model.resize_token_embeddings(old_rows + count, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    new_weights = [model.get_input_embeddings().weight]
    if len(old) == 2:
        new_weights.append(model.get_output_embeddings().weight)
    with torch.no_grad():
        for weight, before in zip(new_weights, old, strict=True):
            weight[:at] = before[:at]
            weight[at : at + count] = draw_new_rows(before[:text_size], count, generator)
            weight[at + count :] = before[at:]
    bias = getattr(model.get_output_embeddings(), "bias", None)
    if bias is not None:  # resize appended the new entries at the end: move them into place
        with torch.no_grad():
            shifted = torch.cat([bias[:at], bias.new_zeros(count), bias[at:old_rows]])
            bias.copy_(shifted)
