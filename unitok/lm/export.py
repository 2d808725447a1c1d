"""An LM training checkpoint as a plain Hugging Face folder (``unitok lm export``).

The checkpoint carries the HF config, generation config, tokenizer files and vocabulary
(``UnifiedLMModule.on_save_checkpoint``), so an export needs neither the training data nor the hub.
A LoRA run (``model.lora``) exports with its adapters merged into the weights, the same plain
folder; or, with ``adapter=True``, as peft's adapter files beside its new embedding rows
(``unitok.lm.lora``), a folder that needs the base to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from unitok.errors import UserError
from unitok.lightning_runs import read_checkpoint
from unitok.lm.image_positions import ATTRIBUTE, attach_image_positions
from unitok.lm.lora import LoraSettings, merge_lora, wrap_for_export
from unitok.lm.model import save_adapter_folder, save_unified_lm
from unitok.lm.module import CHECKPOINT_KEY, restore_tokenizer
from unitok.vocabulary import UnifiedVocabulary


def export_lm(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, adapter: bool = False) -> Path:
    """Lightning checkpoint -> plain HF folder (see ``save_unified_lm``), written atomically;
    ``adapter``: a LoRA run's adapter folder instead (``save_adapter_folder``)."""
    checkpoint = read_checkpoint(checkpoint_path, written_by="unitok lm fit")
    if CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{checkpoint_path} is not a UniTok LM checkpoint (no {CHECKPOINT_KEY!r} entry)")
    stored = checkpoint[CHECKPOINT_KEY]
    config_dict = json.loads(stored["hf_config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    vocab = UnifiedVocabulary.from_dict(stored["vocabulary"])
    lora = stored.get("lora")
    if adapter and lora is None:
        raise UserError(f"{checkpoint_path} was trained without model.lora: it has no adapter to export")
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if f"{ATTRIBUTE}.weight" in state:
        attach_image_positions(model, vocab)
    peft_model = None if lora is None else wrap_for_export(model, vocab, LoraSettings(**lora["settings"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output weights may be stored under one name only; anything else missing is an error.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"checkpoint weights do not fit its model config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_dict(json.loads(stored["generation_config"]))
    tokenizer = restore_tokenizer(stored["tokenizer_files"])
    if adapter:
        return save_adapter_folder(peft_model, tokenizer, vocab, _base_reference(lora["base"]), out_dir)
    if peft_model is not None:
        model = merge_lora(peft_model)
    return save_unified_lm(model.eval(), tokenizer, vocab, out_dir)


def _base_reference(base: str) -> str:
    """A local base folder as an absolute path (the adapter folder may be read from elsewhere);
    a hub id as it is."""
    return str(Path(base).resolve()) if Path(base).is_dir() else base
