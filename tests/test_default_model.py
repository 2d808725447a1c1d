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
from unitok.data import shapes, shapes_language, shapes_tasks
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


def test_the_default_draws_canonical_and_held_out_family_prompts(pipe):
    rng = np.random.default_rng(7)
    families = list(shapes_language.HELD_OUT_FAMILIES)
    prompts = [shapes.canonical_caption(s) for s in SCENES] + [
        shapes_language.describe(s, rng, family=families[i % len(families)], detail="full").text
        for i, s in enumerate(SCENES)]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    read_back = [shapes.analyze(image) for image in pipe(prompts, generator=generators).images]
    right = [r == s for r, s in zip(read_back, SCENES + SCENES, strict=True)]
    assert sum(right[:8]) >= 7 and sum(right[8:]) >= 6, list(zip(prompts, right, strict=True))


def test_the_default_flags_what_it_cannot_draw(pipe):
    output = pipe(["a purple sphere on a black background", "a small red circle at the top left"],
                  generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert any("cannot draw" in warning for warning in output.warnings[0])
    assert not any("cannot draw" in warning for warning in output.warnings[1])


@pytest.mark.parametrize("variant", ["JPEG quality 60", "Lanczos 8x + jitter", "WebP quality 75"])
def test_the_default_captions_held_out_renderings(pipe, variant):
    rng = np.random.default_rng(3)
    images = [load_image(EVAL_VARIANTS[variant](s, 64, rng)).image for s in SCENES]
    parsed = [shapes_language.parse_caption(c) for c in pipe.caption(images)]
    assert sum(p == s for p, s in zip(parsed, SCENES, strict=True)) >= 7, variant


def test_the_default_answers_questions_in_held_out_wordings(pipe):
    rng = np.random.default_rng(11)
    items = [(scene, shapes_tasks.ask(scene, rng, kind, held_out=True))
             for scene, kind in zip(SCENES + SCENES, shapes_tasks.QUESTION_KINDS * 2, strict=False)]
    answers = pipe.answer([shapes.render(scene, 64) for scene, _ in items], [q.text for _, q in items])
    right = [a.strip().lower() == q.answer for (_, q), a in zip(items, answers, strict=True)]
    assert sum(right) >= len(items) - 2, [(q.text, q.answer, a) for (_, q), a in zip(items, answers, strict=True)]


def test_the_default_edits_and_keeps_the_rest(pipe):
    rng = np.random.default_rng(13)
    edits = [shapes_tasks.instruct(scene, rng, kind, held_out=True)
             for scene, kind in zip(SCENES[:7], shapes_tasks.EDIT_KINDS, strict=True)]
    results = pipe.edit([shapes.render(e.before, 64) for e in edits], [e.instruction for e in edits]).images
    seen = [shapes.analyze(image) for image in results]
    assert sum(s == e.after for s, e in zip(seen, edits, strict=True)) >= 5, [e.instruction for e in edits]
    assert sum(shapes_tasks.untouched_preserved(e, s) for s, e in zip(seen, edits, strict=True)) >= 6


def test_ask_and_edit_commands_use_the_default(tmp_path, capsys):
    scene = SCENES[0]
    shapes.render(scene, 64).save(tmp_path / "scene.png")
    assert main(["ask", str(tmp_path / "scene.png"), "how many objects are there?"]) == 0
    assert capsys.readouterr().out.strip() == str(len(scene.objects))
    assert main(["edit", str(tmp_path / "scene.png"), "make the background black", "--out",
                 str(tmp_path / "edited.png")]) == 0
    from PIL import Image

    edited = shapes.analyze(Image.open(tmp_path / "edited.png"))
    assert edited == shapes.Scene("black", scene.objects)


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
