"""Image shards -> code shards: every image encoded once, for LM training (``unitok tokenize``).

Every image reaches the encoder as ``ImageTransform.fit`` makes it: the tokenizer's own view, at
the scale it trained on (``tokenizer.data``), so the LM learns the codes of what the tokenizer saw.

Each output sample has ``codes.npy`` (int16 when the codebook fits, else int32; shape ``(h, w)``,
or ``(h, w, Q)`` for a residual quantizer) and ``{name}.codes.npy`` for every extra image
``{name}.png`` of the input, the ``txt`` caption copied as is and the ``json`` metadata copied with
``tokenizer``, ``grid_size`` and ``codebook_size`` added, so the LM can check its codes' tokenizer.
Keys stay unique when several shard sets (each numbered from zero) are tokenized into one.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenizer.data import ImageTransform
from tokenizer.images import array_to_tensor
from tokenizer.model import VQTokenizer
from unitok.data.shards import ShardWriter, SkipCounter, has_caption, read_shards


def tokenize_shards(model: VQTokenizer, source: str | os.PathLike | list[str], out_dir: str | os.PathLike,
                    prefix: str, name: str, batch_size: int = 256, shard_size: int = 5000) -> dict[str, int]:
    """Encode every image of ``source`` with ``model`` and write code shards to ``out_dir``;
    returns how many samples were written, in how many shards, how many were skipped, how many
    had a key used before (renamed ``KEY-N``) and how many have no caption (LM training leaves
    them out)."""
    skipped = SkipCounter("shard member")
    keys = UniqueKeys()
    uncaptioned = 0
    transform = ImageTransform(model.image_size, random_crop=False)

    def views(sample: dict) -> tuple[dict, list[str], torch.Tensor]:
        names = ["", *sorted(sample["images"])]  # "" is the main image
        pixels = [sample["image"], *(sample["images"][n] for n in names[1:])]
        return sample, names, torch.stack([array_to_tensor(transform.fit(p)) for p in pixels])

    dataset = read_shards(source, training=False, skip_counter=skipped, transform=views)
    dtype = np.int16 if model.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32
    extra = {"tokenizer": name, "grid_size": list(model.grid_size), "codebook_size": model.codebook_size}
    pending: list[tuple[dict, list[str], torch.Tensor]] = []

    def flush(writer: ShardWriter) -> None:
        with torch.inference_mode():
            codes = model.encode(torch.cat([images for _, _, images in pending])).cpu().numpy().astype(dtype)
        offset = 0
        for sample, names, _ in pending:
            member = {"__key__": keys.unique(sample["key"]), "json": {**sample["meta"], **extra}}
            for view, grid in zip(names, codes[offset : offset + len(names)], strict=True):
                member[f"{view}.codes.npy" if view else "codes.npy"] = grid
            offset += len(names)
            if "caption" in sample:
                member["txt"] = sample["caption"]
            writer.write(member)
        pending.clear()

    with ShardWriter(out_dir, prefix=prefix, max_count=shard_size) as writer, \
            tqdm(desc="tokenize", unit="img") as progress:
        for item in dataset:
            pending.append(item)
            uncaptioned += not has_caption(item[0])
            if len(pending) == batch_size:
                flush(writer)
                progress.update(batch_size)
        if pending:
            progress.update(len(pending))
            flush(writer)
    return {"written": writer.total, "shards": len(writer.paths), "skipped": skipped.count,
            "renamed": keys.renamed, "uncaptioned": uncaptioned}


class UniqueKeys:
    """Sample keys made unique: a key seen before becomes ``KEY-1``, ``KEY-2``, ... (webdataset
    splits member names at their first dot, so the suffix has none). Why: shard sets are each
    numbered from zero, and a key names one sample for everything that reads the shards."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.renamed = 0

    def unique(self, key: str) -> str:
        if key in self.seen:
            self.renamed += 1
            key = next(f"{key}-{n}" for n in itertools.count(1) if f"{key}-{n}" not in self.seen)
        self.seen.add(key)
        return key
