"""Where the embedded models live, and how the CLIs pick a model or image tokenizer folder.

The default is a ``UniTokPipeline.save_pretrained`` folder shipped inside the package at
``unitok/assets/unitok-shapes/`` (package data); beside it, image tokenizers for photos
(``EMBEDDED_TOKENIZERS``), which ``--tokenizer`` takes by name. Found through
``importlib.resources`` so they work from a wheel as well as from a checkout. No torch import here:
the CLIs call this before loading anything heavy, so a missing model fails in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from unitok.errors import UserError

DEFAULT_MODEL = "unitok-shapes"
# Image tokenizers shipped in unitok/assets, by the name --tokenizer takes (docs/visual-tokens.md).
EMBEDDED_TOKENIZERS = ("photo128",)
MODEL_INDEX = "model_index.json"


def default_model_dir() -> Path:
    """The embedded default pipeline folder; a UserError when the package was built without it."""
    folder = Path(str(resources.files("unitok") / "assets" / DEFAULT_MODEL))
    if not (folder / MODEL_INDEX).is_file():
        raise UserError(f"the embedded default model is not installed (expected {folder}); "
                        "pass --model DIR with a folder written by UniTokPipeline.save_pretrained "
                        "(`unitok assemble LM_DIR TOKENIZER_DIR OUT_DIR` makes one)")
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
                        "`unitok assemble LM_DIR TOKENIZER_DIR OUT_DIR`")
    return folder


def resolve_tokenizer_dir(value: str | os.PathLike) -> Path:
    """``--tokenizer``: an image tokenizer folder (``unitok tokenizer export``), or the name of one
    shipped in the package (``EMBEDDED_TOKENIZERS``); anything else is a UserError saying what it is."""
    folder = Path(value).expanduser()
    if not folder.exists() and str(value) in EMBEDDED_TOKENIZERS:
        folder = Path(str(resources.files("unitok") / "assets" / str(value)))
    if not folder.is_dir():
        embedded = ", ".join(EMBEDDED_TOKENIZERS)
        raise UserError(f"tokenizer folder {folder} does not exist (pass a folder from `unitok tokenizer export`, "
                        f"or a shipped tokenizer: {embedded})")
    kind = folder_kind(folder)
    if kind == "pipeline":
        raise UserError(f"{folder} is a UniTok pipeline; its image tokenizer is {folder / 'image_tokenizer'}")
    if kind is None:
        raise UserError(f"{folder} is not an image tokenizer folder (no config.json); make one with "
                        "`unitok tokenizer export`")
    if kind != "VQTokenizer":
        raise UserError(f"{folder} holds a {kind}, not an image tokenizer (VQTokenizer)")
    return folder


def folder_kind(folder: Path) -> str | None:
    """What a model folder holds: "pipeline" (a ``model_index.json``), else the class its
    ``config.json`` names (diffusers' ``_class_name`` or a transformers ``architectures`` entry),
    "model of unknown kind" when it names none, None without a config."""
    if (folder / MODEL_INDEX).is_file():
        return "pipeline"
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {config}: {error}") from None
    named = isinstance(data, dict) and (data.get("_class_name") or next(iter(data.get("architectures") or []), None))
    return named or "model of unknown kind"
