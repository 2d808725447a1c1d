"""The unified vocabulary: the one source of the id layout text and image codes share.

``[0, text_size)`` text ids, then the specials (``<|boi|>`` ...), then image code ``k`` at
``image_offset + k``. Saved as ``unitok_vocabulary.json`` beside the LM, which stays a plain
Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unitok.atomic import atomic_file
from unitok.errors import UserError

VOCABULARY_FILE = "unitok_vocabulary.json"
# Name -> token string. Image segments are built at the id level from these ids, never by
# tokenizing their strings (a tokenizer may split " <|boi|>" into a space and the marker).
SPECIALS: dict[str, str] = {
    "boi": "<|boi|>",  # begin of image codes
    "eoi": "<|eoi|>",  # end of image codes
    "uncond": "<|uncond|>",  # the empty caption, for classifier-free guidance
    "rewrite": "<|rewrite|>",  # ends a free-form prompt; its normal form (or reference caption) follows
    "unknown": "<|unknown|>",  # in a rewrite: what follows is what the model cannot draw
    "answer": "<|answer|>",  # ends a question about an image; the answer follows
    "verify": "<|verify|>",  # ends a prompt after an image; <|yes|> or <|no|> follows: does it match?
    "yes": "<|yes|>",
    "no": "<|no|>",
    "edit": "<|edit|>",  # ends an instruction after an image; the edited image follows
}


@dataclass(frozen=True)
class UnifiedVocabulary:
    text_size: int  # ids below this belong to the text tokenizer
    codebook_size: int  # number of image codes
    grid: tuple[int, int]  # (height, width) of an image's code grid
    eos_id: int  # the text tokenizer's end-of-sequence id (ends a caption)
    pad_id: int  # id used for left padding (never attended to, never a target)
    special_names: tuple[str, ...] = field(default=tuple(SPECIALS))
    # Text id that starts every sequence, or None. Decided once per tokenizer family
    # (unitok.lm.text_tokenizer.vocabulary_for) and stored here so every consumer agrees.
    bos_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "special_names", tuple(self.special_names))
        if self.text_size <= 0 or self.codebook_size <= 0 or min(self.grid) <= 0:
            raise ValueError(f"invalid vocabulary sizes: {self}")
        if not 0 <= self.eos_id < self.text_size:
            raise ValueError(f"eos_id {self.eos_id} must be a text id (< {self.text_size})")
        if self.bos_id is not None and not 0 <= self.bos_id < self.text_size:
            raise ValueError(f"bos_id {self.bos_id} must be a text id (< {self.text_size})")

    # -- layout ------------------------------------------------------------------------------
    def special_id(self, name: str) -> int:
        try:
            return self.text_size + self.special_names.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; known: {self.special_names}") from None

    @property
    def boi_id(self) -> int:
        return self.special_id("boi")

    @property
    def eoi_id(self) -> int:
        return self.special_id("eoi")

    @property
    def uncond_id(self) -> int:
        return self.special_id("uncond")

    @property
    def rewrite_id(self) -> int:
        return self.special_id("rewrite")

    @property
    def can_rewrite(self) -> bool:
        """Whether the layout has <|rewrite|> (vocabularies saved before it was added do not)."""
        return "rewrite" in self.special_names

    def has(self, *names: str) -> bool:
        """Whether the layout has all these specials (older vocabularies have fewer tasks)."""
        return all(name in self.special_names for name in names)

    @property
    def image_offset(self) -> int:
        return self.text_size + len(self.special_names)

    @property
    def size(self) -> int:
        """Total number of ids: the LM's embedding must have exactly this many rows."""
        return self.image_offset + self.codebook_size

    @property
    def tokens_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def special_tokens(self) -> list[str]:
        return [SPECIALS[name] for name in self.special_names]

    @property
    def image_tokens(self) -> list[str]:
        """Token strings of image codes, so a plain HF tokenizer can name every id."""
        return [f"<|img_{k}|>" for k in range(self.codebook_size)]

    # -- conversions ---------------------------------------------------------------------------
    def to_lm_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes ``[..., h, w]`` -> LM ids ``[..., h*w]`` in reading order."""
        if tuple(codes.shape[-2:]) != self.grid:
            raise ValueError(f"codes must end in the grid {self.grid}, got shape {tuple(codes.shape)}")
        codes = codes.long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        return codes.flatten(-2) + self.image_offset

    def from_lm_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """LM ids ``[..., h*w]`` -> image codes ``[..., h, w]``; rejects ids outside the image range."""
        if ids.shape[-1] != self.tokens_per_image:
            raise ValueError(f"expected {self.tokens_per_image} image ids, got shape {tuple(ids.shape)}")
        codes = ids.long() - self.image_offset
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError("ids outside the image-code range cannot be turned into codes")
        return codes.unflatten(-1, self.grid)

    def text_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """True for text-tokenizer ids (what captioning may emit)."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        mask[: self.text_size] = True
        return mask

    def image_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """True for image-code ids (what text-to-image may emit before <|eoi|>)."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        mask[self.image_offset :] = True
        return mask

    # -- persistence and checks ----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["grid"] = list(self.grid)
        data["special_names"] = list(self.special_names)
        data["layout"] = {"image_offset": self.image_offset, "size": self.size,
                          "special_ids": {n: self.special_id(n) for n in self.special_names}}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> UnifiedVocabulary:
        fields = {k: v for k, v in data.items() if k != "layout"}
        try:
            vocab = cls(**fields)
        except TypeError as error:
            raise UserError(f"not a UniTok vocabulary: {error}") from error
        if "layout" in data and data["layout"].get("image_offset") != vocab.image_offset:
            raise UserError("vocabulary file is inconsistent: stored image_offset differs from its sizes")
        return vocab

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / VOCABULARY_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> UnifiedVocabulary:
        path = Path(directory) / VOCABULARY_FILE
        if not path.is_file():
            raise UserError(f"{directory} has no {VOCABULARY_FILE}: it is not a UniTok LM folder "
                            "(export one with `unitok lm export CKPT OUT_DIR`)")
        return cls.from_dict(json.loads(path.read_text()))

    def check_compatible(
        self,
        *,
        codebook_size: int | None = None,
        grid: tuple[int, int] | None = None,
        lm_vocab_size: int | None = None,
        text_size: int | None = None,
    ) -> None:
        """Fail with a clear message when the image tokenizer, LM or text tokenizer disagree."""
        problems = []
        if codebook_size is not None and codebook_size != self.codebook_size:
            problems.append(f"image tokenizer has {codebook_size} codes, vocabulary expects {self.codebook_size}")
        if grid is not None and tuple(grid) != self.grid:
            problems.append(f"image tokenizer makes a {tuple(grid)} code grid, vocabulary expects {self.grid}")
        if lm_vocab_size is not None and lm_vocab_size != self.size:
            problems.append(f"LM has {lm_vocab_size} embedding rows, vocabulary needs {self.size}")
        if text_size is not None and text_size != self.text_size:
            problems.append(f"text tokenizer has {text_size} ids, vocabulary expects {self.text_size}")
        if problems:
            raise UserError("model parts do not match: " + "; ".join(problems)
                            + ". Use the image tokenizer and text tokenizer the LM was trained with.")
