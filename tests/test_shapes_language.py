"""The Shapes prompt language: every family says what its spec says, and reads back to it."""

import numpy as np
import pytest

from unitok.data import shapes
from unitok.data.shapes_language import (
    COLOR_WORDS,
    DETAILS,
    FAMILIES,
    HELD_OUT_FAMILIES,
    SHAPE_WORDS,
    SIZE_WORDS,
    TRAIN_FAMILIES,
    UNKNOWN_COLORS,
    UNKNOWN_COLORS_HELD_OUT,
    UNKNOWN_SHAPES,
    UNKNOWN_SHAPES_HELD_OUT,
    ObjectSpec,
    Relation,
    SceneSpec,
    describe,
    describe_unknown,
    normal_form,
    parse_caption,
    parse_prompt,
)


def test_the_lexicon_covers_the_domain_exactly():
    assert set(SIZE_WORDS) == set(shapes.SIZES) and set(COLOR_WORDS) == set(shapes.COLORS)
    assert set(SHAPE_WORDS) == set(shapes.SHAPES)
    assert not set(TRAIN_FAMILIES) & set(HELD_OUT_FAMILIES)
    assert not set(UNKNOWN_SHAPES) & set(UNKNOWN_SHAPES_HELD_OUT)
    assert not set(UNKNOWN_COLORS) & set(UNKNOWN_COLORS_HELD_OUT)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("detail", DETAILS)
def test_every_family_reads_back_to_what_it_says(family, detail):
    rng = np.random.default_rng(abs(hash((family, detail))) % 2**32)
    for _ in range(150):
        scene = shapes.random_scene(rng)
        prompt = describe(scene, rng, family=family, detail=detail, noise=False)
        assert prompt.spec.satisfied_by(scene)
        assert prompt.spec.same_meaning(parse_prompt(prompt.text)), (prompt.text, normal_form(prompt.spec))
        if detail == "full":
            assert parse_caption(prompt.text) == scene, prompt.text


def test_case_and_end_punctuation_do_not_change_the_meaning():
    rng = np.random.default_rng(1)
    scene = shapes.random_scene(rng)
    text = describe(scene, rng, family="plain", detail="full", noise=False).text
    for variant in (text.upper(), text.title(), text + ".", text + "!"):
        assert parse_caption(variant) == scene


def test_the_normal_form_of_a_full_spec_is_the_canonical_caption_and_parses_back():
    rng = np.random.default_rng(2)
    for _ in range(500):
        scene = shapes.random_scene(rng)
        assert normal_form(SceneSpec.of(scene)) == shapes.canonical_caption(scene)
        spec = describe(scene, rng, detail="relations").spec
        assert spec.same_meaning(parse_prompt(normal_form(spec)))


@pytest.mark.parametrize(("text", "holds", "fails"), [
    ("a red circle above a blue square",
     "a large red circle at the top and a small blue square at the bottom right on a white background",
     "a large red circle at the bottom and a small blue square at the top on a white background"),
    ("two pink pluses side by side",
     "a small pink plus at the left and a large pink plus at the center on a black background",
     "a small pink plus at the top and a small pink plus at the center on a black background"),
    ("three squares",
     "a small red square at the top, a large blue square at the left and a small red square at the bottom "
     "on a gray background",
     "a small red square at the top and a large blue square at the left on a gray background"),
    ("a yellow plus and a pink square",
     "a large yellow plus at the center and a small pink square at the bottom left on a white background",
     "a large yellow plus at the center on a white background"),
    ("a big red circle in the top left",
     "a large red circle at the top left on a black background",
     "a small red circle at the top left on a black background"),
    ("a blue plus, lower right, on white",
     "a small blue plus at the bottom right on a white background",
     "a small blue plus at the bottom right on a black background"),
    ("A Small Purple Square In The Middle.",
     "a small purple square at the center on a gray background",
     "a small purple square at the center and a small red circle at the top on a gray background"),
])
def test_what_people_type_means_what_they_mean(text, holds, fails):
    spec = parse_prompt(text)
    assert spec is not None
    assert spec.satisfied_by(parse_caption(holds)) and not spec.satisfied_by(parse_caption(fails))


def test_relations_hold_on_the_grid():
    cells = [(0, 0), (1, 0), (1, 2)]
    assert Relation("above", (0, 2)).holds(cells) and not Relation("above", (2, 0)).holds(cells)
    assert Relation("next to", (0, 1)).holds(cells) and not Relation("next to", (0, 2)).holds(cells)
    assert Relation("left of", (0, 2)).holds(cells) and Relation("in a column", (1, 2)).holds(cells)
    assert not Relation("in a row", (0, 1, 2)).holds(cells)
    turned = SceneSpec((ObjectSpec(shape="circle"), ObjectSpec(shape="square")), relations=(Relation("below", (0, 1)),))
    same = SceneSpec((ObjectSpec(shape="square"), ObjectSpec(shape="circle")), relations=(Relation("above", (0, 1)),))
    assert turned.same_meaning(same)  # "a circle below a square" is "a square above a circle"


@pytest.mark.parametrize("text", ["a big yellow star", "draw a cat", "a purple hexagon at the top", "a teal circle"])
def test_words_outside_the_domain_do_not_read(text):
    assert parse_prompt(text) is None


def test_prompts_about_what_cannot_be_drawn_name_it():
    rng = np.random.default_rng(3)
    for held_out in (False, True):
        for _ in range(100):
            scene = shapes.random_scene(rng)
            prompt, word = describe_unknown(scene, rng, held_out=held_out)
            assert word in prompt.text.lower()
            assert word in ((UNKNOWN_SHAPES_HELD_OUT + UNKNOWN_COLORS_HELD_OUT) if held_out
                            else (UNKNOWN_SHAPES + UNKNOWN_COLORS))
            assert prompt.spec.satisfied_by(scene)  # what is left is drawable, and true of the scene
