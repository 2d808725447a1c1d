"""The Shapes domain is exact: rendering, reading back and captions must agree for every scene."""

import numpy as np
import pytest
from PIL import Image

from unitok.data import shapes
from unitok.data.shapes_language import parse_caption


@pytest.mark.parametrize("size", [64, 128])
def test_analyze_reads_back_every_rendered_scene(size):
    rng = np.random.default_rng(size)
    scenes = [shapes.random_scene(rng) for _ in range(2000)]
    wrong = [s for s in scenes if shapes.analyze(shapes.render(s, size)) != s]
    assert wrong == []


def test_canonical_caption_parses_back():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        scene = shapes.random_scene(rng)
        assert parse_caption(shapes.canonical_caption(scene)) == scene


def test_examples_from_the_spec():
    scene = shapes.Scene("white", (shapes.ShapeObject("top left", "large", "red", "circle"),))
    assert shapes.canonical_caption(scene) == "a large red circle at the top left on a white background"
    three = parse_caption(
        "a small green triangle at the top, a large pink circle at the left and "
        "a small cyan square at the bottom on a gray background"
    )
    assert [o.position for o in three.objects] == ["top", "left", "bottom"]
    assert three.background == "gray"


@pytest.mark.parametrize("text", [
    "a big red circle in the upper left corner on a white background",
    "on a white background: in the top left corner a huge red circle",
    "one shape on a white background: a large red circle at the upper left",
    "large red circle top left; white background",
])
def test_synonyms_and_word_orders(text):
    assert parse_caption(text) == parse_caption("a large red circle at the top left on a white background")


@pytest.mark.parametrize("text", [
    "",
    "a cat on a sofa",
    "a large red circle at the top left",  # no background
    "a large red circle on a white background",  # no position
    "a red circle at the top left on a white background",  # no size
    "a large red circle at the top left and a small blue square at the top left on a white background",
    "a large red blue circle at the top left on a white background",
])
def test_unparsable_captions_give_none(text):
    assert parse_caption(text) is None


def test_render_geometry_and_antialiasing():
    scene = shapes.Scene("black", (shapes.ShapeObject("center", "small", "blue", "square"),))
    pixels = np.asarray(shapes.render(scene, 128))
    # square half-extent 0.08*128 = 10.24 around 64: the left edge is at x = 53.76, so of
    # pixel 53's four supersamples (53.125 ... 53.875) exactly one is inside: 25% coverage.
    assert tuple(pixels[64, 64]) == shapes.COLORS["blue"]
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[64, 52]) == (0, 0, 0)
    assert tuple(pixels[64, 53]) == (10, 20, 55)


def test_analyze_tolerates_noise():
    rng = np.random.default_rng(3)
    for _ in range(100):
        scene = shapes.random_scene(rng)
        pixels = np.asarray(shapes.render(scene, 64)).astype(float) + rng.normal(0, 8, (64, 64, 3))
        noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        assert shapes.analyze(noisy) == scene


def test_analyze_of_an_empty_canvas_is_none():
    assert shapes.analyze(Image.new("RGB", (64, 64), (255, 255, 255))) is None


def test_scene_validation_and_json_round_trip():
    with pytest.raises(ValueError, match="unknown color"):
        shapes.ShapeObject("top", "small", "magenta", "circle")
    with pytest.raises(ValueError, match="distinct cells"):
        shapes.Scene("white", (shapes.ShapeObject("top", "small", "red", "circle"),) * 2)
    scene = shapes.random_scene(np.random.default_rng(4))
    assert shapes.Scene.from_dict(scene.to_dict()) == scene
