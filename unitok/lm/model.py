"""Building, saving and loading the unified LM: a plain Hugging Face causal LM + its vocabulary.

Two ways in: any HF causal LM (hub id or folder) with its own tokenizer, whose embedding is
extended with UniTok's rows; or a small Llama from scratch with a BPE trained on the captions (the
embedded default). Either way the result saves as a normal HF folder plus ``unitok_vocabulary.json``
and loads back with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without ``trust_remote_code``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_directory
from unitok.errors import UserError
from unitok.lm.embedding_rows import draw_new_rows
from unitok.lm.image_positions import image_positions_saved_apart, load_image_positions
from unitok.lm.layout_upgrade import add_missing_specials
from unitok.lm.lora import ADAPTER_CONFIG_FILE, adapter_base, apply_adapter, save_adapter
from unitok.lm.text_tokenizer import check_tokenizer, extend_tokenizer, vocabulary_for
from unitok.vocabulary import SPECIALS, VOCABULARY_FILE, UnifiedVocabulary

if TYPE_CHECKING:
    from peft import PeftModel


@dataclass
class ScratchConfig:
    """A small Llama for the from-scratch LM (the embedded default uses this)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 768
    max_positions: int = 512
    tie_embeddings: bool = True
    initializer_range: float = 0.02


def _set_special_ids(model: PreTrainedModel, vocab: UnifiedVocabulary) -> None:
    """Make plain ``model.generate`` stop at EOS (captioning) or <|eoi|> (text-to-image)."""
    model.config.pad_token_id = vocab.pad_id
    model.config.eos_token_id = vocab.eos_id
    model.config.bos_token_id = vocab.bos_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = vocab.pad_id
        model.generation_config.eos_token_id = [vocab.eos_id, vocab.eoi_id]
        model.generation_config.bos_token_id = vocab.bos_id


def build_scratch_lm(
    text_tokenizer: PreTrainedTokenizerBase, codebook_size: int, grid: tuple[int, int], config: ScratchConfig,
    special_names: tuple[str, ...] = tuple(SPECIALS),
) -> tuple[PreTrainedModel, UnifiedVocabulary]:
    """A randomly initialised Llama sized for the unified vocabulary (with ``special_names``; an
    older layout has fewer); extends ``text_tokenizer``."""
    vocab = vocabulary_for(text_tokenizer, codebook_size, grid, special_names)
    extend_tokenizer(text_tokenizer, vocab)
    llama = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.initializer_range,
        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
    )
    model = LlamaForCausalLM(llama)
    _set_special_ids(model, vocab)
    return model, vocab


def build_pretrained_lm(
    name_or_path: str,
    codebook_size: int,
    grid: tuple[int, int],
    text_tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, UnifiedVocabulary]:
    """Any HF causal LM (hub id or folder) with its tokenizer, extended with UniTok's rows.

    A folder that is already a UniTok LM (it has ``unitok_vocabulary.json``) is loaded as it is,
    after checking that its vocabulary fits the image tokenizer, so training can continue from an
    export; one saved before a special token was added gains its rows (``layout_upgrade``).
    """
    if (Path(name_or_path) / VOCABULARY_FILE).is_file():
        model, tokenizer, vocab = load_unified_lm(name_or_path, dtype=dtype)
        vocab.check_compatible(codebook_size=codebook_size, grid=grid)
        model, tokenizer, vocab = add_missing_specials(model, tokenizer, vocab, seed=seed)
        _set_special_ids(model, vocab)
        return model.train(), tokenizer, vocab
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_tokenizer or name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as error:
        raise UserError(f"cannot load the causal LM {name_or_path!r}: {error}") from error
    # A config object shared with another model would be resized with it: give this one its own.
    model.config = copy.deepcopy(model.config)
    vocab = vocabulary_for(tokenizer, codebook_size, grid)
    extend_tokenizer(tokenizer, vocab)
    resize_embeddings(model, vocab, seed=seed)
    _set_special_ids(model, vocab)
    return model.train(), tokenizer, vocab


def resize_embeddings(model: PreTrainedModel, vocab: UnifiedVocabulary, seed: int = 0) -> None:
    """Give the model exactly ``vocab.size`` rows; rows from ``vocab.text_size`` on are new, drawn
    by ``draw_new_rows``. An untied output head gets the same treatment; a tied one follows the
    input embedding."""
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings()
    old_output = None if old_output is None else old_output.weight.detach().clone()
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    tied = _is_tied(model)
    for embedding, old in ((model.get_input_embeddings(), old_input), (model.get_output_embeddings(), old_output)):
        if embedding is None or old is None or (tied and embedding is model.get_output_embeddings()):
            continue
        with torch.no_grad():
            rows = draw_new_rows(old[: vocab.text_size], vocab.size - vocab.text_size, generator)
            embedding.weight[vocab.text_size:] = rows.to(embedding.weight.dtype)
    if model.config.get_text_config().vocab_size != vocab.size:
        raise RuntimeError(f"resizing left config.vocab_size at {model.config.vocab_size}, expected {vocab.size}")


def _is_tied(model: PreTrainedModel) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def save_unified_lm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, vocab: UnifiedVocabulary, out_dir: str | os.PathLike
) -> Path:
    """Write a plain HF folder (config.json, model.safetensors, tokenizer files, vocabulary JSON,
    and the image-position table when the LM has one: ``unitok.lm.image_positions``).

    Written into a temporary sibling folder and renamed into place, so ``out_dir`` is either the
    previous export or the complete new one, never half written.
    """
    check_tokenizer(tokenizer, vocab)
    vocab.check_compatible(lm_vocab_size=model.get_input_embeddings().num_embeddings)
    with atomic_directory(out_dir) as tmp:
        with image_positions_saved_apart(model, tmp):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        vocab.save(tmp)
    return Path(out_dir)


def save_adapter_folder(
    peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase, vocab: UnifiedVocabulary, base: str, out_dir: str | os.PathLike
) -> Path:
    """A LoRA run as a small folder (written atomically): peft's adapter files (their base is
    ``base``), the new embedding rows, tokenizer files, the vocabulary and any image-position
    table. ``load_unified_lm`` loads it onto the base, merged."""
    model = peft_model.base_model.model
    check_tokenizer(tokenizer, vocab)
    vocab.check_compatible(lm_vocab_size=model.get_input_embeddings().num_embeddings)
    with atomic_directory(out_dir) as tmp:
        with image_positions_saved_apart(model, tmp):
            save_adapter(peft_model, base, tmp)
        tokenizer.save_pretrained(tmp)
        vocab.save(tmp)
    return Path(out_dir)


def load_unified_lm(
    directory: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, UnifiedVocabulary]:
    """Load an exported UniTok LM folder as (model in eval mode, text tokenizer, vocabulary); an
    adapter folder (``save_adapter_folder``) is loaded onto its base with the adapters merged.

    Fails with a clear message when the model, the tokenizer and the vocabulary file disagree.
    """
    vocab = UnifiedVocabulary.load(directory)
    if (Path(directory) / ADAPTER_CONFIG_FILE).is_file():
        model = apply_adapter(_load_base(adapter_base(directory), dtype), vocab, directory)
        _set_special_ids(model, vocab)
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    vocab.check_compatible(lm_vocab_size=model.get_input_embeddings().num_embeddings)
    check_tokenizer(tokenizer, vocab)
    load_image_positions(model, vocab, directory)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer, vocab


def _load_base(name_or_path: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """The base an adapter folder was trained on: any HF causal LM, or a UniTok folder."""
    if (Path(name_or_path) / VOCABULARY_FILE).is_file():
        return load_unified_lm(name_or_path, dtype=dtype)[0]
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as error:
        raise UserError(f"cannot load the adapter's base {name_or_path!r} ({error}); if it has moved, "
                        f"set base_model_name_or_path in {ADAPTER_CONFIG_FILE}") from error


def check_parts(
    vocabulary: UnifiedVocabulary, lm: PreTrainedModel, text_tokenizer: PreTrainedTokenizerBase, image_tokenizer: VQTokenizer
) -> None:
    """Fail with a clear message unless the three parts fit the vocabulary layout."""
    if image_tokenizer.config.quantizer == "residual":
        raise UserError("the pipeline needs one code per grid cell; a residual (multi-code) image tokenizer "
                        "does not fit the unified vocabulary")
    vocabulary.check_compatible(
        codebook_size=image_tokenizer.codebook_size,
        grid=image_tokenizer.grid_size,
        lm_vocab_size=lm.get_input_embeddings().num_embeddings,
    )
    check_tokenizer(text_tokenizer, vocabulary)
