"""Where the embedded default model lives, and how the CLIs pick a model folder.

The default is a ``UniTokPipeline.save_pretrained`` folder shipped inside the package at
``unitok/assets/unitok-shapes/`` (package data), found through ``importlib.resources`` so it
works from a wheel as well as from a checkout. No torch import here: the CLIs call this before
loading anything heavy, so a missing model fails in a fraction of a second.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from unitok.errors import UserError

DEFAULT_MODEL = "unitok-shapes"
MODEL_INDEX = "model_index.json"


def default_model_dir() -> Path:
    """The embedded default pipeline folder; a UserError when the package was built without it."""
    folder = Path(str(resources.files("unitok") / "assets" / DEFAULT_MODEL))
    if not (folder / MODEL_INDEX).is_file():
        raise UserError(f"the embedded default model is not installed (expected {folder}); "
                        "pass --model DIR with a folder written by UniTokPipeline.save_pretrained "
                        "(scripts/assemble_pipeline.py LM_DIR TOKENIZER_DIR OUT_DIR makes one)")
    return folder


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """``--model DIR`` when given (checked to be a pipeline folder), else the embedded default."""
    if model is None:
        return default_model_dir()
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / MODEL_INDEX).is_file():
        raise UserError(f"{folder} is not a UniTok pipeline folder (no {MODEL_INDEX}); assemble one with "
                        "`python scripts/assemble_pipeline.py LM_DIR TOKENIZER_DIR OUT_DIR`")
    return folder
