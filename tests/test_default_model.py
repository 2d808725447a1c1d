"""The shipped default (``unitok/assets/unitok-shapes``) draws and reads Shapes scenes.

A handful of held-out scenes (the val split, which no training shard contains), fixed seeds and
the model's own sampling defaults. The thresholds follow what ``unitok eval shapes`` measured on
the shipped default (docs/results.md, 2026-12-03), with room for a miss or two: canonical captions
drawn 96 % exact; captions by rendering: own 97 %, bilinear 97 %, Lanczos 8x 88 %, WebP 86 %,
JPEG q60 72 %. It predates questions and editing, and says so. Its weak rows (other phrasings,
relations, the out-of-domain flag) are figures in the README, not tests.
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
from unitok.data import shapes, shapes_language
from unitok.data.images import load_image
from unitok.data.shapes_renderings import EVAL_VARIANTS
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


def test_the_default_draws_canonical_captions(pipe):
    prompts = [shapes.canonical_caption(s) for s in SCENES]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    read_back = [shapes.analyze(image) for image in pipe(prompts, generator=generators).images]
    assert sum(r == s for r, s in zip(read_back, SCENES, strict=True)) >= 7, list(zip(prompts, read_back, strict=True))


@pytest.mark.parametrize(("variant", "at_least"), [
    ("own renderer (box 4x), PNG", 7), ("bilinear 4x", 7), ("Lanczos 8x + jitter", 6), ("WebP quality 75", 6),
    ("JPEG quality 60", 5)])
def test_the_default_captions_held_in_and_held_out_renderings(pipe, variant, at_least):
    rng = np.random.default_rng(3)
    images = [load_image(EVAL_VARIANTS[variant](s, 64, rng)).image for s in SCENES]
    parsed = [shapes_language.parse_caption(c) for c in pipe.caption(images)]
    assert sum(p == s for p, s in zip(parsed, SCENES, strict=True)) >= at_least, variant


def test_ask_and_edit_say_clearly_that_the_shipped_default_predates_those_tasks(tmp_path, capsys):
    shapes.render(SCENES[0], 64).save(tmp_path / "scene.png")
    assert main(["ask", str(tmp_path / "scene.png"), "how many objects are there?"]) == 2
    assert "cannot answer questions" in capsys.readouterr().err
    assert main(["edit", str(tmp_path / "scene.png"), "make the background black", "--out",
                 str(tmp_path / "edited.png")]) == 2
    assert "cannot edit images" in capsys.readouterr().err
    assert not (tmp_path / "edited.png").exists()


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
    read = [shapes_language.parse_caption(row["caption"]) for row in rows]
    assert read == [scene for scene in WHITE_SCENES for _ in range(2)]


def test_the_api_reads_them_the_same_way(pipe):
    with serve_in_background(create_app(PipelineBackend(pipe, name="unitok-shapes"))) as url:
        files = [("images", (name, data, "image/jpeg" if name.endswith(".jpg") else "image/png"))
                 for name, data in phone_and_transparent_files()]
        captions = httpx.post(f"{url}/v1/captions", files=files, timeout=120).json()["captions"]
    assert [shapes_language.parse_caption(c) for c in captions] == [scene for scene in WHITE_SCENES for _ in range(2)]
