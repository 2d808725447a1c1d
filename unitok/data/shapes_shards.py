"""Shapes training data as webdataset shards: rendered scene, reference caption, paraphrases."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from unitok.data import shapes
from unitok.data.shards import ShardWriter

SPLITS = ("train", "val")
VAL_BUCKETS = 20  # one scene in 20 belongs to val; train never contains a val scene
PARAPHRASES_PER_SCENE = 3


def scene_split(scene: shapes.Scene) -> str:
    """The split a scene belongs to, by a stable hash of its canonical caption.

    Splitting the scene space itself (not only the seeds) keeps val scenes out of train by
    construction, even for the few thousand one-object scenes that random draws repeat.
    """
    digest = hashlib.sha256(shapes.canonical_caption(scene).encode()).digest()
    return "val" if int.from_bytes(digest[:4], "little") % VAL_BUCKETS == 0 else "train"


def scenes_for_split(split: str, num: int, seed: int) -> list[shapes.Scene]:
    """``num`` scenes of ``split``, deterministic for (split, seed); seeds of splits never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    scenes = []
    while len(scenes) < num:
        scene = shapes.random_scene(rng)
        if scene_split(scene) == split:
            scenes.append(scene)
    return scenes


def write_shapes_shards(
    out_dir: str | os.PathLike, num: int, size: int = 64, seed: int = 0, split: str = "train",
    shard_size: int = 5000, progress: bool = True,
) -> list[Path]:
    """Render ``num`` scenes into ``{split}-NNNNNN.tar`` shards (png, txt, json)."""
    scenes = scenes_for_split(split, num, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), 1)))
    with ShardWriter(out_dir, prefix=split, max_count=shard_size) as writer:
        for index, scene in enumerate(tqdm(scenes, desc=f"shapes {split}", unit="img", disable=not progress)):
            meta = {
                "scene": scene.to_dict(),
                "paraphrases": [shapes.paraphrase(scene, rng) for _ in range(PARAPHRASES_PER_SCENE)],
                "size": size,
            }
            writer.write({
                "__key__": f"{split}-{index:07d}",
                "png": shapes.render(scene, size),
                "txt": shapes.canonical_caption(scene),
                "json": meta,
            })
    return writer.paths
