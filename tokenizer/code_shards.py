"""Image shards -> code shards: every image encoded once, for LM training (``unitok tokenize``).

Each output sample has ``codes.npy`` (int16 when the codebook fits, else int32; shape ``(h, w)``,
or ``(h, w, Q)`` for a residual quantizer), the ``txt`` caption copied as is and the ``json``
metadata copied with ``tokenizer`` (name of the tokenizer folder), ``grid_size`` and
``codebook_size`` added, so the LM can check it reads codes of the tokenizer it expects.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenizer.data import ImageTransform
from tokenizer.model import VQTokenizer
from unitok.data.shards import ShardWriter, SkipCounter, read_shards


def tokenize_shards(model: VQTokenizer, source: str | os.PathLike | list[str], out_dir: str | os.PathLike,
                    prefix: str, name: str, batch_size: int = 256, shard_size: int = 5000) -> dict[str, int]:
    """Encode every image of ``source`` with ``model`` and write code shards to ``out_dir``;
    returns how many samples were written, in how many shards, and how many were skipped."""
    skipped = SkipCounter("shard member")
    transform = ImageTransform(model.image_size, random_crop=False)
    dataset = read_shards(source, training=False, skip_counter=skipped,
                          transform=lambda sample: (sample, transform(sample)))
    dtype = np.int16 if model.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32
    extra = {"tokenizer": name, "grid_size": list(model.grid_size), "codebook_size": model.codebook_size}
    pending: list[tuple[dict, torch.Tensor]] = []

    def flush(writer: ShardWriter) -> None:
        with torch.inference_mode():
            codes = model.encode(torch.stack([image for _, image in pending])).cpu().numpy()
        for (sample, _), grid in zip(pending, codes, strict=True):
            member = {"__key__": sample["key"], "codes.npy": grid.astype(dtype), "json": {**sample["meta"], **extra}}
            if "caption" in sample:
                member["txt"] = sample["caption"]
            writer.write(member)
        pending.clear()

    with ShardWriter(out_dir, prefix=prefix, max_count=shard_size) as writer, \
            tqdm(desc="tokenize", unit="img") as progress:
        for item in dataset:
            pending.append(item)
            if len(pending) == batch_size:
                flush(writer)
                progress.update(batch_size)
        if pending:
            progress.update(len(pending))
            flush(writer)
    return {"written": writer.total, "shards": len(writer.paths), "skipped": skipped.count}
