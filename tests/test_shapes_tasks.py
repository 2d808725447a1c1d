"""Questions and edits about Shapes scenes carry their exact answers and results."""

import numpy as np
import pytest

from unitok.data import shapes
from unitok.data.shapes_language import Words, parse_prompt
from unitok.data.shapes_tasks import (
    EDIT_KINDS,
    HELD_OUT_INSTRUCTION_FAMILIES,
    HELD_OUT_QUESTION_FAMILIES,
    INSTRUCTION_FAMILIES,
    QUESTION_FAMILIES,
    QUESTION_KINDS,
    ask,
    instruct,
    refer,
    untouched_preserved,
)

SCENE = shapes.Scene("black", (shapes.ShapeObject("top left", "large", "red", "circle"),
                               shapes.ShapeObject("top", "small", "blue", "square"),
                               shapes.ShapeObject("bottom right", "small", "red", "square")))


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_every_kind_of_question_has_a_short_answer_of_its_kind(kind):
    rng = np.random.default_rng(0)
    allowed = {"count": set("0123"), "count shape": set("0123"), "count color": set("0123"),
               "color at": {*shapes.COLORS, "nothing"}, "shape at": {*shapes.SHAPES, "nothing"},
               "size at": {*shapes.SIZES, "nothing"}, "background": set(shapes.BACKGROUNDS),
               "exists": {"yes", "no"}, "where": set(shapes.POSITIONS)}
    for _ in range(200):
        question = ask(shapes.random_scene(rng), rng, kind)
        if question.kind != kind:  # "where" and "relation" fall back when nothing can be asked
            continue
        if kind == "relation":
            assert question.answer == "nothing" or question.answer.split(" ")[1] in shapes.SHAPES
        else:
            assert question.answer in allowed[kind], question


def test_answers_are_the_scenes_facts():
    rng = np.random.default_rng(1)
    assert ask(SCENE, rng, "count").answer == "3"
    answers = {q.text.lower().rstrip("?"): q.answer
               for q in (ask(SCENE, rng, "count shape", family="direct") for _ in range(300))}
    assert answers.get("how many squares are there") == "2" and answers.get("how many circles are there") == "1"
    where = [ask(SCENE, rng, "where") for _ in range(300)]
    of_the_circle = [q.answer for q in where if any(word in q.text.lower() for word in ("circle", "disc", "disk"))]
    assert of_the_circle and set(of_the_circle) == {"top left"}


@pytest.mark.parametrize("family", QUESTION_FAMILIES + HELD_OUT_QUESTION_FAMILIES)
def test_every_family_words_every_kind_and_keeps_the_answer(family):
    for kind in QUESTION_KINDS:
        worded = ask(SCENE, np.random.default_rng(4), kind, family=family)
        direct = ask(SCENE, np.random.default_rng(4), kind, family="direct")
        assert worded.family == family and worded.text and worded.answer == direct.answer


def test_held_out_question_families_never_word_a_training_question():
    """A held-out question is new as a whole, though its words are the training questions' words."""
    rng = np.random.default_rng(5)
    normal = lambda text: text.lower().rstrip("?")  # noqa: E731
    training = {normal(ask(shapes.random_scene(rng), rng).text) for _ in range(20000)}
    held_out = [ask(shapes.random_scene(rng), rng, held_out=True) for _ in range(3000)]
    assert {q.family for q in held_out} == set(HELD_OUT_QUESTION_FAMILIES)
    assert not [q.text for q in held_out if normal(q.text) in training]
    # The terse family is new grammar, not new words: nearly all its questions use training words only.
    words = lambda text: set(normal(text).replace(",", " ").replace(":", " ").split())  # noqa: E731
    training_words = set().union(*map(words, training))
    terse = [q for q in held_out if q.family == "terse"]
    assert sum(words(q.text) <= training_words for q in terse) >= 0.9 * len(terse)


def test_an_unknown_question_family_is_refused():
    with pytest.raises(ValueError, match="question family"):
        ask(SCENE, np.random.default_rng(0), "count", family="sonnet")


def test_references_tell_the_object_apart():
    rng = np.random.default_rng(2)
    for _ in range(300):
        index = int(rng.integers(3))
        reference = refer(SCENE, index, Words(rng))
        spec = parse_prompt(reference.removeprefix("the "))
        matches = [o for o in SCENE.objects if spec.objects[0].matches(o)]
        assert matches == [SCENE.objects[index]], reference


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_edit_changes_what_it_says_and_nothing_else(kind):
    rng = np.random.default_rng(3)
    for _ in range(100):
        scene = shapes.random_scene(rng)
        edit = instruct(scene, rng, kind)
        assert edit.after != edit.before and untouched_preserved(edit, edit.after)
        if edit.kind == kind:
            changed = set(edit.before.objects) ^ set(edit.after.objects)
            assert (edit.before.background != edit.after.background) == (kind == "background")
            assert len(changed) == {"add": 1, "remove": 1, "background": 0}.get(kind, 2)
    assert not untouched_preserved(instruct(SCENE, rng, "recolor"), SCENE.__class__("white", SCENE.objects))


@pytest.mark.parametrize("family", INSTRUCTION_FAMILIES + HELD_OUT_INSTRUCTION_FAMILIES)
def test_every_family_words_every_edit_and_keeps_what_it_does(family):
    for kind in EDIT_KINDS:
        worded = instruct(SCENE, np.random.default_rng(6), kind, family=family)
        plain = instruct(SCENE, np.random.default_rng(6), kind, family="imperative")
        assert worded.family == family and worded.instruction
        assert (worded.kind, worded.after, worded.touched) == (plain.kind, plain.after, plain.touched)


def test_held_out_instruction_families_never_word_a_training_instruction():
    rng = np.random.default_rng(7)
    normal = lambda text: text.lower().rstrip(".")  # noqa: E731
    training = {normal(instruct(shapes.random_scene(rng), rng).instruction) for _ in range(20000)}
    held_out = [instruct(shapes.random_scene(rng), rng, held_out=True) for _ in range(3000)]
    assert {e.family for e in held_out} == set(HELD_OUT_INSTRUCTION_FAMILIES)
    assert not [e.instruction for e in held_out if normal(e.instruction) in training]


def test_an_unknown_instruction_family_is_refused():
    with pytest.raises(ValueError, match="instruction family"):
        instruct(SCENE, np.random.default_rng(0), "recolor", family="haiku")
