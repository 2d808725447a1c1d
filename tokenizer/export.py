"""A tokenizer training checkpoint as a ``save_pretrained`` folder that ``VQTokenizer.from_pretrained`` loads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_directory
from unitok.errors import UserError
from unitok.lightning_runs import read_checkpoint


def export_tokenizer(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Lightning checkpoint -> folder (config.json + safetensors), written atomically."""
    state = read_checkpoint(checkpoint, written_by="unitok tokenizer fit")
    config = state.get("hyper_parameters", {}).get("tokenizer")
    if "state_dict" not in state or config is None:
        raise UserError(f"{checkpoint} is not a tokenizer checkpoint (no tokenizer hyper-parameters)")
    model = VQTokenizer(**config)
    weights = {k.removeprefix("tokenizer."): v for k, v in state["state_dict"].items() if k.startswith("tokenizer.")}
    model.load_state_dict(weights)
    model.to(memory_format=torch.contiguous_format)  # safetensors stores plain contiguous tensors
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
    return Path(out_dir)
