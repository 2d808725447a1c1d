"""The shipped default (``unitok/assets/unitok-shapes``) draws and reads Shapes scenes.

A handful of held-out scenes (the val split, which no training shard contains), fixed seeds and
the model's own sampling defaults (prompt rewriting on). The thresholds follow what ``unitok eval
shapes`` measured on 300 scenes (README), with room for a miss or two: text-to-image 94.0 % exact
scenes from canonical captions and 91.7 % from paraphrases, captioning 95.7 %, paraphrases
rewritten to the right scene 99.0 % (these 8 scenes: 8, 8, 8 and 8 of 8).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.pipeline import UniTokPipeline
from unitok.data import shapes
from unitok.data.shapes_shards import scenes_for_split
from unitok.default_model import default_model_dir

SCENES = scenes_for_split("val", 8, seed=7)


@pytest.fixture(scope="module")
def pipe() -> UniTokPipeline:
    pipeline = UniTokPipeline.from_pretrained(default_model_dir())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_default_loads_offline_from_the_package_and_is_small(pipe):
    folder = default_model_dir()
    assert folder.parent.name == "assets" and folder.parent.parent.name == "unitok"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    assert pipe.vocabulary.grid == pipe.image_tokenizer.grid_size


@pytest.mark.parametrize(("phrasing", "at_least"), [("canonical", 6), ("paraphrased", 6)])
def test_the_default_draws_scenes_the_analyzer_reads_back(pipe, phrasing, at_least):
    rng = np.random.default_rng(7)
    prompts = [shapes.canonical_caption(s) if phrasing == "canonical" else shapes.paraphrase(s, rng) for s in SCENES]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    read_back = [shapes.analyze(image) for image in pipe(prompts, generator=generators).images]
    assert sum(r == s for r, s in zip(read_back, SCENES, strict=True)) >= at_least, list(zip(prompts, read_back, strict=True))


def test_the_default_captions_rendered_scenes(pipe):
    captions = pipe.caption([shapes.render(s, 64) for s in SCENES])
    parsed = [shapes.parse_caption(c) for c in captions]
    assert sum(p == s for p, s in zip(parsed, SCENES, strict=True)) >= 7, captions


def test_the_default_restates_paraphrases_as_their_scenes_and_keeps_canonical_captions(pipe):
    assert pipe.config.default_rewrite_prompts
    rng = np.random.default_rng(7)
    paraphrases = [shapes.paraphrase(s, rng) for s in SCENES]
    restated = [shapes.parse_caption(text) for text in pipe.rewrite_prompts(paraphrases)]
    assert sum(r == s for r, s in zip(restated, SCENES, strict=True)) >= 7, list(zip(paraphrases, restated, strict=True))
    canonical = [shapes.canonical_caption(s) for s in SCENES]
    assert sum(a == b for a, b in zip(pipe.rewrite_prompts(canonical), canonical, strict=True)) >= 7
