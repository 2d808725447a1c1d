"""Shapes training data as webdataset shards: a faithful rendering of each scene (the image a user
might send), its canonical render, the reference caption, prompts in the prompt language with
their normal forms, questions with answers, and one edit with the edited scene's render."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from unitok.data import shapes, shapes_language, shapes_tasks
from unitok.data.shapes_renderings import faithful_file
from unitok.data.shards import ShardWriter

SPLITS = ("train", "val")
VAL_BUCKETS = 20  # one scene in 20 belongs to val; train never contains a val scene
PROMPTS_PER_SCENE = 6
QUESTIONS_PER_SCENE = 4


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
    """Render ``num`` scenes into ``{split}-NNNNNN.tar`` shards.

    Members: ``png``/``jpg`` (a faithful rendering: another renderer, JPEG, RGBA, palette, noise),
    ``clean.png`` (the canonical render), ``edited.png`` (the canonical render of the edited
    scene), ``txt`` (the canonical caption) and ``json`` (``sample_meta``). Only the prompt
    language's training families and phrasings are used.
    """
    scenes = scenes_for_split(split, num, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), 1)))
    with ShardWriter(out_dir, prefix=split, max_count=shard_size) as writer:
        for index, scene in enumerate(tqdm(scenes, desc=f"shapes {split}", unit="img", disable=not progress)):
            data, ext = faithful_file(scene, size, rng)
            meta, edit = sample_meta(scene, rng)
            writer.write({
                "__key__": f"{split}-{index:07d}",
                ext: data,
                "clean.png": shapes.render(scene, size),
                "edited.png": shapes.render(edit.after, size),
                "txt": shapes.canonical_caption(scene),
                "json": {**meta, "size": size},
            })
    return writer.paths


def sample_meta(scene: shapes.Scene, rng: np.random.Generator) -> tuple[dict, shapes_tasks.Edit]:
    """The texts of a training sample: ``prompts`` (text, normal form; one asks for something the
    domain cannot draw and names it under ``unknown``), ``verify`` (prompts the scene does or does
    not match), ``questions`` (with answers) and ``edit`` (an instruction and the scene it makes)."""
    prompts = []
    for _ in range(PROMPTS_PER_SCENE):
        prompt = shapes_language.describe(scene, rng)
        prompts.append({"text": prompt.text, "normal": shapes_language.normal_form(prompt.spec),
                        "family": prompt.family})
    unknown, word = shapes_language.describe_unknown(scene, rng)
    prompts.append({"text": unknown.text, "normal": shapes_language.normal_form(unknown.spec), "unknown": word,
                    "family": "unknown"})
    questions = [shapes_tasks.ask(scene, rng) for _ in range(QUESTIONS_PER_SCENE)]
    edit = shapes_tasks.instruct(scene, rng)
    return {
        "scene": scene.to_dict(),
        "prompts": prompts,
        "paraphrases": [p["text"] for p in prompts if "unknown" not in p],
        "verify": [{"text": prompts[0]["text"], "match": True},
                   {"text": mismatch(scene, rng), "match": False},
                   {"text": unknown.text, "match": False}],
        "questions": [{"question": q.text, "answer": q.answer, "kind": q.kind, "family": q.family}
                      for q in questions],
        "edit": {"instruction": edit.instruction, "kind": edit.kind, "family": edit.family,
                 "after": edit.after.to_dict()},
    }, edit


def mismatch(scene: shapes.Scene, rng: np.random.Generator) -> str:
    """A prompt ``scene`` does not satisfy: the description of a scene one edit away from it."""
    while True:
        other = shapes_tasks.instruct(scene, rng).after
        prompt = shapes_language.describe(other, rng)
        if not prompt.spec.satisfied_by(scene):
            return prompt.text
