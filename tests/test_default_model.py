"""The shipped default (``unitok/assets/unitok-shapes``) draws and reads Shapes scenes.

A handful of held-out scenes (the val split, which no training shard contains), fixed seeds and
the model's own sampling defaults (prompt rewriting on). The thresholds follow what ``unitok eval
shapes`` measured on 300 scenes (docs/results.md), with room for a miss or two: text-to-image 94.0 % exact
scenes from canonical captions and 91.7 % from paraphrases, captioning 95.7 %, paraphrases
rewritten to the right scene 99.0 % (these 8 scenes: 8, 8, 8 and 8 of 8).
"""

from __future__ import annotations

import json

import httpx
import image_variants
import numpy as np
import pytest
import torch

from generation.pipeline import UniTokPipeline
from unitok.api.app import create_app
from unitok.api.backend import PipelineBackend
from unitok.api.server import serve_in_background
from unitok.cli import main
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


WHITE_SCENES = [s for s in scenes_for_split("val", 60, seed=5) if s.background == "white"][:4]


def phone_and_transparent_files() -> list[tuple[str, bytes]]:
    """Per scene, a phone-style JPEG (pixels turned, EXIF orientation 6) and an RGBA PNG."""
    files = []
    for index, scene in enumerate(WHITE_SCENES):
        image = shapes.render(scene, 64)
        files += [(f"{index}.jpg", image_variants.exif_turned(image, "JPEG", quality=90)),
                  (f"{index}.png", image_variants.transparent(image))]
    return files


def test_a_phone_jpeg_turned_by_exif_and_a_transparent_png_are_captioned_upright_on_white(tmp_path, capsys):
    paths = []
    for name, data in phone_and_transparent_files():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    assert main(["caption", *map(str, paths), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    read = [shapes.parse_caption(row["caption"]) for row in rows]
    assert read == [scene for scene in WHITE_SCENES for _ in range(2)]


def test_the_api_reads_them_the_same_way(pipe):
    with serve_in_background(create_app(PipelineBackend(pipe, name="unitok-shapes"))) as url:
        files = [("images", (name, data, "image/jpeg" if name.endswith(".jpg") else "image/png"))
                 for name, data in phone_and_transparent_files()]
        captions = httpx.post(f"{url}/v1/captions", files=files, timeout=120).json()["captions"]
    assert [shapes.parse_caption(c) for c in captions] == [scene for scene in WHITE_SCENES for _ in range(2)]
