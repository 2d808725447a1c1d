"""An LM training checkpoint as a plain Hugging Face folder (``unitok lm export``).

The checkpoint carries the HF config, generation config, tokenizer files and vocabulary
(``UnifiedLMModule.on_save_checkpoint``), so an export needs neither the training data nor the hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from unitok.errors import UserError
from unitok.lightning_runs import read_checkpoint
from unitok.lm.image_positions import ATTRIBUTE, attach_image_positions
from unitok.lm.model import save_unified_lm
from unitok.lm.module import CHECKPOINT_KEY, restore_tokenizer
from unitok.vocabulary import UnifiedVocabulary


def export_lm(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Lightning checkpoint -> plain HF folder (see ``save_unified_lm``), written atomically."""
    checkpoint = read_checkpoint(checkpoint_path, written_by="unitok lm fit")
    if CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{checkpoint_path} is not a UniTok LM checkpoint (no {CHECKPOINT_KEY!r} entry)")
    stored = checkpoint[CHECKPOINT_KEY]
    config_dict = json.loads(stored["hf_config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    vocab = UnifiedVocabulary.from_dict(stored["vocabulary"])
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if f"{ATTRIBUTE}.weight" in state:
        attach_image_positions(model, vocab)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output weights may be stored under one name only; anything else missing is an error.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"checkpoint weights do not fit its model config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_dict(json.loads(stored["generation_config"]))
    tokenizer = restore_tokenizer(stored["tokenizer_files"])
    return save_unified_lm(model.eval(), tokenizer, vocab, out_dir)
