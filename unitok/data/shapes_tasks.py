"""Questions about a Shapes scene and instructions that edit one, each with its exact answer.

``ask(scene, rng, kind)`` draws a question of a kind (``QUESTION_KINDS``) and its short answer (a
digit, yes/no, a colour, a shape, small/large, a position name, "red circle" or "nothing");
``instruct(scene, rng)`` draws an edit (``EDIT_KINDS``), the scene it makes and an instruction
that says it. Objects are referred to by whatever tells them apart (colour, shape, size,
position), in the prompt language's words. Questions and instructions are worded by families, as
prompts are; the held-out families (``HELD_OUT_QUESTION_FAMILIES``, ``HELD_OUT_INSTRUCTION_FAMILIES``)
never appear in training.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from unitok.data.shapes import BACKGROUNDS, COLORS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject
from unitok.data.shapes_language import BACKGROUND_WORDS, SHAPE_WORDS, Words, _article, _pick

QUESTION_KINDS = ("count", "count shape", "count color", "color at", "shape at", "size at", "background", "exists",
                  "where", "relation")
EDIT_KINDS = ("recolor", "reshape", "resize", "move", "add", "remove", "background")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    kind: str
    family: str


@dataclass(frozen=True)
class Edit:
    instruction: str
    before: Scene
    after: Scene
    kind: str
    touched: str | None  # the position of the object the edit changes (None: the background, or a new object)
    family: str


# ---------------------------------------------------------------------------------------------
# Referring to an object


def refer(scene: Scene, index: int, words: Words, attributes: tuple[str, ...] = ("shape", "color", "size", "position"),
          ) -> str | None:
    """"the red circle", "the circle at the top left", "the big square": the fewest ``attributes``
    that tell ``scene.objects[index]`` from the others (chosen at random among the shortest), or
    None when those attributes cannot tell it apart."""
    target = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    for k in range(len(attributes) + 1):
        subsets = [c for c in itertools.combinations(attributes, k)
                   if not any(all(getattr(o, n) == getattr(target, n) for n in c) for o in others)]
        if subsets:
            chosen = set(_pick(words.rng, subsets))
            if words.rng.random() < 0.3 and len(chosen) < len(attributes):  # sometimes say more than needed
                chosen.add(_pick(words.rng, [n for n in attributes if n not in chosen]))
            break
    else:
        return None
    adjectives = [words.size(target.size)] if "size" in chosen else []
    adjectives += [words.color(target.color)] if "color" in chosen else []
    text = " ".join(["the", *adjectives, words.noun(target.shape if "shape" in chosen else None)])
    if "position" in chosen:
        text += " " + words.position(target.position)
    return text


def _answer_object(obj: ShapeObject) -> str:
    return f"{obj.color} {obj.shape}"


# ---------------------------------------------------------------------------------------------
# Questions
#
# A question is its content (what is asked, and its answer) put into words by a family, as prompts
# are (``shapes_language``). Each kind of question gives its content in four grammatical forms: a
# direct question ("what colour is the shape at the top"), an embedded one ("what colour the shape
# at the top is", for "can you tell me ..."), a noun phrase ("the colour of the shape at the top",
# for "tell me ...") and a terse one ("colour of the shape at the top", "top: what colour").
# Families put the forms together; the held-out families use forms and frames no training
# question has, out of words training questions do use, so they measure whether a model learned
# the words rather than the frames. ``legacy`` keeps the first held-out wordings verbatim, so
# figures stay comparable with the runs measured on them.


@dataclass
class _Content:
    """What a question asks, in each form (lists of alternatives), and its answer."""

    direct: list[str]
    embedded: list[str]
    noun: list[str]
    terse: list[str]
    legacy: list[str]
    answer: str


_COLOR_NOUNS = ("color", "colour", "color", "colour", "hue", "shade")
_SHAPE_NOUNS = ("shape", "shape", "form", "kind of shape", "type of shape")
_POLITE = ("can you tell me", "could you tell me", "do you know", "please tell me", "tell me", "i want to know",
           "i'd like to know", "let me know", "can you say")
_COMMANDS = ("tell me", "give me", "what is", "what's", "state", "please give me", "i need", "say")
_SCOPES_BEFORE = ("in this image, ", "in the picture, ", "looking at the image, ", "here, ", "in this scene, ")
_SCOPES_AFTER = (" in the image", " in this picture", " here", " in the scene", " in this image")
_WONDERING = ("i wonder", "any idea", "would you mind telling me", "i'm curious about", "do you happen to know",
              "i was wondering")

QUESTION_FAMILIES = ("direct", "polite", "command", "scoped")
HELD_OUT_QUESTION_FAMILIES = ("terse", "wondering", "legacy")


def _number(n: int) -> str:
    return str(n)


def ask(scene: Scene, rng: np.random.Generator, kind: str | None = None, held_out: bool = False,
        family: str | None = None) -> Question:
    """A question of ``kind`` (default: any) about ``scene``, worded by ``family`` (default: any
    training family, or any held-out one when ``held_out``), and its answer."""
    kind = kind or _pick(rng, QUESTION_KINDS)
    family = family or _pick(rng, HELD_OUT_QUESTION_FAMILIES if held_out else QUESTION_FAMILIES)
    if family not in QUESTION_FAMILIES + HELD_OUT_QUESTION_FAMILIES:
        raise ValueError(f"unknown question family {family!r}")
    words = Words(rng)
    content = _QUESTIONS[kind](scene, words)
    if content is None:  # nothing of this kind has one answer here ("where" of an object that has a twin)
        kind, content = "count", _count(scene, words)
    q = _worded(content, family, words).strip()
    if rng.random() < 0.7:
        q += "?"
    if rng.random() < 0.15:
        q = q[:1].upper() + q[1:]
    return Question(q, content.answer, kind, family)


def _worded(content: _Content, family: str, words: Words) -> str:
    pick = lambda options: _pick(words.rng, options)  # noqa: E731
    if family == "direct":
        return pick(content.direct)
    if family == "polite":
        return f"{pick(_POLITE)} {pick(content.embedded)}"
    if family == "command":
        if content.noun and words.rng.random() < 0.75:
            return f"{pick(_COMMANDS)} {pick(content.noun)}"
        return f"{pick(('tell me', 'say', 'please tell me'))} {pick(content.embedded)}"
    if family == "scoped":
        if words.rng.random() < 0.5:
            return pick(_SCOPES_BEFORE) + pick(content.direct)
        return pick(content.direct) + pick(_SCOPES_AFTER)
    if family == "terse":
        return pick(content.terse)
    if family == "wondering":
        return f"{pick(_WONDERING)} {pick(content.embedded)}"
    return pick(content.legacy)


def _count(scene: Scene, words: Words) -> _Content:
    things = words.noun(None, plural=True)
    return _count_of(things, len(scene.objects),
                     legacy=["tell me how many objects the image contains", "number of shapes in this image"])


def _count_of(things: str, n: int, legacy: list[str]) -> _Content:
    return _Content(
        direct=[f"how many {things} are there", f"how many {things} do you see", f"how many {things} are in the image",
                f"how many {things} can you see", f"what is the number of {things}", f"count the {things}"],
        embedded=[f"how many {things} there are", f"how many {things} you see", f"how many {things} the image has",
                  f"the number of {things}"],
        noun=[f"the number of {things}", f"the total number of {things}"],
        terse=[f"number of {things}", f"{things}: how many", f"count of {things}", f"{things} count"],
        legacy=legacy, answer=_number(n))


def _count_shape(scene: Scene, words: Words) -> _Content:
    shape = _pick(words.rng, SHAPES)
    plural = _pick(words.rng, SHAPE_WORDS[shape])[1]
    return _count_of(plural, sum(o.shape == shape for o in scene.objects),
                     legacy=[f"what number of {plural} can be found", f"{plural}: how many"])


def _count_color(scene: Scene, words: Words) -> _Content:
    color = _pick(words.rng, list(COLORS)) if words.rng.random() < 0.5 else _pick(words.rng, scene.objects).color
    things = f"{words.color(color)} {words.noun(None, plural=True)}"
    return _count_of(things, sum(o.color == color for o in scene.objects),
                     legacy=[f"what number of {things} can be found", f"tell me the count of {things}"])


def _at(scene: Scene, words: Words) -> tuple[str, ShapeObject | None]:
    occupied = {o.position: o for o in scene.objects}
    position = _pick(words.rng, list(occupied)) if words.rng.random() < 0.8 else _pick(words.rng, POSITIONS)
    return words.position(position), occupied.get(position)


def _attribute_at(scene: Scene, words: Words, nouns: Sequence[str], value: str) -> tuple[_Content, str]:
    """The direct, embedded, noun and terse forms of "what <noun> is the shape <where>"."""
    where, obj = _at(scene, words)
    thing, noun = words.noun(None), _pick(words.rng, nouns)
    bare = where.split(" ", 2)[-1] if where.startswith(("at the ", "in the ", "on the ")) else where
    content = _Content(
        direct=[f"what {noun} is the {thing} {where}", f"which {noun} is the {thing} {where}",
                f"what is the {noun} of the {thing} {where}", f"what {noun} does the {thing} {where} have"],
        embedded=[f"what {noun} the {thing} {where} is", f"which {noun} the {thing} {where} has",
                  f"the {noun} of the {thing} {where}"],
        noun=[f"the {noun} of the {thing} {where}", f"the {thing} {where}'s {noun}"],
        terse=[f"{noun} of the {thing} {where}", f"{bare}: what {noun}", f"{noun} {where}", f"{bare} {noun}"],
        legacy=[], answer=getattr(obj, value) if obj else "nothing")
    return content, where


def _color_at(scene: Scene, words: Words) -> _Content:
    content, where = _attribute_at(scene, words, _COLOR_NOUNS, "color")
    content.legacy = [f"the shape {where} has which colour", f"name the colour found {where}"]
    return content


def _shape_at(scene: Scene, words: Words) -> _Content:
    content, where = _attribute_at(scene, words, _SHAPE_NOUNS, "shape")
    content.direct += [f"what is {where}", f"what do you see {where}"]
    content.embedded += [f"what is {where}"]
    content.legacy = [f"name the shape found {where}", f"the object {where} is which shape"]
    return content


def _size_at(scene: Scene, words: Words) -> _Content:
    content, where = _attribute_at(scene, words, ("size",), "size")
    thing = words.noun(None)
    big, small = words.size("large"), words.size("small")
    content.direct += [f"is the {thing} {where} {big} or {small}", f"how big is the {thing} {where}"]
    content.embedded += [f"whether the {thing} {where} is {big} or {small}", f"how big the {thing} {where} is"]
    content.terse += [f"{big} or {small}: the {thing} {where}"]
    content.legacy = [f"the object {where} is of which size", f"small or large: the shape {where}"]
    return content


def _background(scene: Scene, words: Words) -> _Content:
    noun = _pick(words.rng, _COLOR_NOUNS)
    ground = _pick(words.rng, ("background", "background", "backdrop", "canvas"))
    return _Content(
        direct=[f"what {noun} is the {ground}", f"which {noun} is the {ground}", f"what is the {ground} {noun}",
                f"what is the {noun} of the {ground}"],
        embedded=[f"what {noun} the {ground} is", f"which {noun} the {ground} has", f"the {ground} {noun}"],
        noun=[f"the {noun} of the {ground}", f"the {ground} {noun}", f"the {ground}'s {noun}"],
        terse=[f"{ground} {noun}", f"{noun} of the {ground}", f"{ground}: what {noun}"],
        legacy=["the backdrop is which colour", "name the colour behind the shapes"], answer=scene.background)


def _exists(scene: Scene, words: Words) -> _Content:
    if words.rng.random() < 0.5:
        obj = _pick(words.rng, scene.objects)
        color, shape = obj.color, obj.shape
    else:
        color, shape = _pick(words.rng, list(COLORS)), _pick(words.rng, SHAPES)
    size = None
    if words.rng.random() < 0.3:
        size = _pick(words.rng, list(SIZES))
    phrase = " ".join([*([words.size(size)] if size else []), words.color(color), words.noun(shape)])
    a = f"{_article(phrase)} {phrase}"
    found = any(o.color == color and o.shape == shape and size in (None, o.size) for o in scene.objects)
    return _Content(
        direct=[f"is there {a}", f"do you see {a}", f"does the picture have {a}", f"is there any {phrase}",
                f"does the image contain {a}", f"can you see {a}"],
        embedded=[f"whether there is {a}", f"if there is {a}", f"whether the image has {a}", f"if you see {a}"],
        noun=[], terse=[f"any {phrase}", f"{a} anywhere", f"{phrase} present", f"{a}: yes or no"],
        legacy=[f"can {a} be found", f"does {a} appear anywhere"], answer="yes" if found else "no")


def _where(scene: Scene, words: Words) -> _Content | None:
    """"where is the blue circle?" about an object its other attributes tell apart."""
    for index in words.rng.permutation(len(scene.objects)):
        ref = refer(scene, int(index), words, attributes=("shape", "color", "size"))
        if ref is not None:
            place = _pick(words.rng, ("position", "location", "place"))
            return _Content(
                direct=[f"where is {ref}", f"in which position is {ref}", f"where can i find {ref}",
                        f"which cell is {ref} in", f"what is the {place} of {ref}"],
                embedded=[f"where {ref} is", f"in which position {ref} is", f"where i can find {ref}"],
                noun=[f"the {place} of {ref}", f"{ref}'s {place}"],
                terse=[f"{place} of {ref}", f"{ref}: where", f"where's {ref}"],
                legacy=[f"locate {ref}", f"the position of {ref} is what"],
                answer=scene.objects[int(index)].position)
    return None


_RELATION_QUESTIONS = {"left of": lambda a, b: a[0] < b[0], "right of": lambda a, b: a[0] > b[0],
                       "above": lambda a, b: a[1] < b[1], "below": lambda a, b: a[1] > b[1]}


def _relation(scene: Scene, words: Words) -> _Content | None:
    """"what is left of the triangle?": asked only where one object, or none, is."""
    choices = [(kind, index) for kind in _RELATION_QUESTIONS for index in range(len(scene.objects))]
    for choice in words.rng.permutation(len(choices)):
        kind, index = choices[int(choice)]
        anchor = scene.objects[index]
        hits = [o for o in scene.objects if o is not anchor and _RELATION_QUESTIONS[kind](o.cell, anchor.cell)]
        if len(hits) <= 1:
            break
    else:
        return None
    phrase = _pick(words.rng, {"left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
                               "above": ("above", "over"), "below": ("below", "under", "beneath")}[kind])
    ref, thing = refer(scene, index, words), words.noun(None)
    return _Content(
        direct=[f"what is {phrase} {ref}", f"which {thing} is {phrase} {ref}", f"what do you see {phrase} {ref}"],
        embedded=[f"what is {phrase} {ref}", f"which {thing} is {phrase} {ref}", f"what you see {phrase} {ref}"],
        noun=[f"the {thing} {phrase} {ref}", f"the {thing} that is {phrase} {ref}"],
        terse=[f"{phrase} {ref}: what", f"the {thing} {phrase} {ref}", f"{thing} {phrase} {ref}"],
        legacy=[f"name the object {phrase} {ref}", f"tell me what lies {phrase} {ref}"],
        answer=_answer_object(hits[0]) if hits else "nothing")


_QUESTIONS = {"count": _count, "count shape": _count_shape, "count color": _count_color, "color at": _color_at,
              "shape at": _shape_at, "size at": _size_at, "background": _background, "exists": _exists,
              "where": _where, "relation": _relation}


# ---------------------------------------------------------------------------------------------
# Edits
#
# An edit is chosen first (what changes, and the scene it makes), then worded by a family. Each kind
# gives imperative sentences ("make the red circle blue"), goals ("let the red circle be blue",
# "i'd like the red circle blue") and terse forms ("red circle → blue"); training families use the
# first two, held-out ones the terse forms, imperatives behind wrappers no training instruction
# has, and (``legacy``) the first held-out wordings verbatim.

INSTRUCTION_FAMILIES = ("imperative", "polite", "goal")
HELD_OUT_INSTRUCTION_FAMILIES = ("terse", "urging", "legacy")
_POLITE_EDITS = ("please ", "can you ", "could you ", "would you ", "please, ")
_URGING = ("i need you to ", "go ahead and ", "kindly ", "you should ", "now ", "i'm asking you to ")


@dataclass
class _Change:
    """An edit's result and its wordings (lists of alternatives)."""

    after: Scene
    touched: str | None
    imperative: list[str]
    goal: list[str]
    terse: list[str]
    legacy: list[str]


def instruct(scene: Scene, rng: np.random.Generator, kind: str | None = None, held_out: bool = False,
             family: str | None = None) -> Edit:
    """An edit of ``kind`` (default: any that applies to ``scene``) with an instruction saying it,
    worded by ``family`` (default: any training family, or any held-out one when ``held_out``)."""
    kinds = [k for k in EDIT_KINDS if _applies(k, scene)]
    kind = kind if kind in kinds else _pick(rng, kinds)
    family = family or _pick(rng, HELD_OUT_INSTRUCTION_FAMILIES if held_out else INSTRUCTION_FAMILIES)
    if family not in INSTRUCTION_FAMILIES + HELD_OUT_INSTRUCTION_FAMILIES:
        raise ValueError(f"unknown instruction family {family!r}")
    words = Words(rng)
    change = _EDITS[kind](scene, words)
    text = _pick(rng, {"imperative": change.imperative, "goal": change.goal, "terse": change.terse,
                       "legacy": change.legacy}.get(family, change.imperative))
    if family == "polite":
        text = _pick(rng, _POLITE_EDITS) + text
    elif family == "urging":
        text = _pick(rng, _URGING) + text
    if rng.random() < 0.15:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.2:
        text += "."
    return Edit(text, scene, change.after, kind, change.touched, family)


def _applies(kind: str, scene: Scene) -> bool:
    if kind in ("move", "add"):
        return len(scene.objects) < len(POSITIONS) and (kind == "move" or len(scene.objects) < MAX_OBJECTS)
    if kind == "remove":
        return len(scene.objects) > 1
    return True


def _target(scene: Scene, words: Words) -> tuple[int, ShapeObject, str]:
    index = int(words.rng.integers(len(scene.objects)))
    return index, scene.objects[index], refer(scene, index, words)


def _changed(scene: Scene, index: int, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return Scene(scene.background, tuple(objects))


def _free_cells(scene: Scene) -> list[str]:
    return [p for p in POSITIONS if p not in {o.position for o in scene.objects}]


def _bare(reference: str) -> str:
    """"the red circle" -> "red circle", for terse instructions."""
    return reference.removeprefix("the ")


def _recolor(scene: Scene, words: Words) -> _Change:
    index, obj, ref = _target(scene, words)
    color = _pick(words.rng, [c for c in COLORS if c != obj.color])
    c = words.color(color)
    return _Change(
        _changed(scene, index, color=color), obj.position,
        imperative=[f"make {ref} {c}", f"color {ref} {c}", f"recolor {ref} to {c}", f"change the color of {ref} to {c}",
                    f"paint {ref} {c}", f"turn {ref} {c}", f"change the colour of {ref} to {c}"],
        goal=[f"let {ref} be {c}", f"i'd like {ref} {c}", f"i'd like {ref} in {c}", f"{ref} in {c}, please"],
        terse=[f"{_bare(ref)} → {c}", f"{ref}: {c}", f"{_bare(ref)} to {c}", f"{c} for {ref}"],
        legacy=[f"i want {ref} to be {c} instead", f"{ref} should become {c}"])


def _reshape(scene: Scene, words: Words) -> _Change:
    index, obj, ref = _target(scene, words)
    shape = _pick(words.rng, [s for s in SHAPES if s != obj.shape])
    noun = words.noun(shape)
    a = f"{_article(noun)} {noun}"
    return _Change(
        _changed(scene, index, shape=shape), obj.position,
        imperative=[f"turn {ref} into {a}", f"change {ref} to {a}", f"replace {ref} with {a}", f"make {ref} {a}"],
        goal=[f"let {ref} be {a}", f"i'd like {ref} as {a}", f"i'd like {a} instead of {ref}"],
        terse=[f"{_bare(ref)} → {noun}", f"{ref}: {a}", f"{a} for {ref}", f"{_bare(ref)} to {noun}"],
        legacy=[f"i want {ref} to be {a} instead", f"{ref} should become {a}"])


def _resize(scene: Scene, words: Words) -> _Change:
    index, obj, ref = _target(scene, words)
    size = "small" if obj.size == "large" else "large"
    word = words.size(size)
    verbs = ["shrink {}", "make {} smaller"] if size == "small" else ["enlarge {}", "make {} bigger", "make {} larger",
                                                                      "grow {}"]
    return _Change(
        _changed(scene, index, size=size), obj.position,
        imperative=[v.format(ref) for v in verbs] + [f"make {ref} {word}", f"resize {ref} to {word}",
                                                     f"change {ref} to {word}"],
        goal=[f"let {ref} be {word}", f"i'd like {ref} {word}", f"i'd like {ref} to be {word}"],
        terse=[f"{_bare(ref)} → {word}", f"{ref}: {word}", f"{word} {_bare(ref)}", f"{_bare(ref)} to {word}"],
        legacy=[f"i want {ref} to be {word} instead", f"{ref} should become {word}"])


def _move(scene: Scene, words: Words) -> _Change:
    index, obj, ref = _target(scene, words)
    position = _pick(words.rng, _free_cells(scene))
    where, bare = words.position(position), words.position(position, bare=True)
    return _Change(
        _changed(scene, index, position=position), obj.position,
        imperative=[f"move {ref} {where}", f"put {ref} {where}", f"shift {ref} {where}", f"place {ref} {where}",
                    f"slide {ref} over {where}"],
        goal=[f"let {ref} sit {where}", f"i'd like {ref} {where}", f"{ref} {where}, please"],
        terse=[f"{_bare(ref)} → {bare}", f"{ref}: {bare}", f"{_bare(ref)} to the {bare}"],
        legacy=[f"relocate {ref} so it sits {where}", f"{ref} belongs {where}"])


def _add(scene: Scene, words: Words) -> _Change:
    new = ShapeObject(_pick(words.rng, _free_cells(scene)), _pick(words.rng, list(SIZES)), _pick(words.rng, list(COLORS)),
                      _pick(words.rng, SHAPES))
    phrase = f"{words.size(new.size)} {words.color(new.color)} {words.noun(new.shape)}"
    a = f"{_article(phrase)} {phrase}"
    where = words.position(new.position)
    return _Change(
        Scene(scene.background, (*scene.objects, new)), None,
        imperative=[f"add {a} {where}", f"put {a} {where}", f"draw {a} {where}", f"place {a} {where}",
                    f"insert {a} {where}"],
        goal=[f"let there be {a} {where}", f"i'd like {a} {where} too", f"{a} {where} as well, please"],
        terse=[f"+ {a} {where}", f"one more: {a} {where}", f"also {a} {where}"],
        legacy=[f"i want {a} {where} as well", f"there should also be {a} {where}"])


def _remove(scene: Scene, words: Words) -> _Change:
    index, obj, ref = _target(scene, words)
    objects = tuple(o for i, o in enumerate(scene.objects) if i != index)
    return _Change(
        Scene(scene.background, objects), obj.position,
        imperative=[f"remove {ref}", f"delete {ref}", f"take away {ref}", f"get rid of {ref}", f"erase {ref}"],
        goal=[f"let {ref} go", f"i'd like {ref} gone", f"i'd like it without {ref}"],
        terse=[f"{_bare(ref)} → gone", f"no {_bare(ref)}", f"without {ref}", f"minus {ref}"],
        legacy=[f"i no longer want {ref}", f"{ref} should disappear"])


def _background_edit(scene: Scene, words: Words) -> _Change:
    background = _pick(words.rng, [b for b in BACKGROUNDS if b != scene.background])
    w = _pick(words.rng, BACKGROUND_WORDS[background])
    return _Change(
        Scene(background, scene.objects), None,
        imperative=[f"make the background {w}", f"change the background to {w}", f"set the background to {w}",
                    f"use a {w} background", f"turn the background {w}"],
        goal=[f"let the background be {w}", f"i'd like a {w} background", f"i'd like the background {w}"],
        terse=[f"background → {w}", f"{w} background", f"background: {w}", f"on {w} instead"],
        legacy=[f"i want the backdrop to be {w}", f"the background should become {w}"])


_EDITS = {"recolor": _recolor, "reshape": _reshape, "resize": _resize, "move": _move, "add": _add,
          "remove": _remove, "background": _background_edit}


def untouched_preserved(edit: Edit, result: Scene | None) -> bool:
    """Whether every object the edit does not touch is in ``result`` as it was (and the background,
    unless the edit changes it)."""
    if result is None:
        return False
    if edit.kind != "background" and result.background != edit.before.background:
        return False
    kept = [o for o in edit.before.objects if o.position != edit.touched]
    return all(o in result.objects for o in kept)
