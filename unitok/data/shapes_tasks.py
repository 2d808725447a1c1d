"""Questions about a Shapes scene and instructions that edit one, each with its exact answer.

``ask(scene, rng, kind)`` draws a question of a kind (``QUESTION_KINDS``) and its short answer (a
digit, yes/no, a colour, a shape, small/large, a position name, "red circle" or "nothing");
``instruct(scene, rng)`` draws an edit (``EDIT_KINDS``), the scene it makes and an instruction
that says it. Objects are referred to by whatever tells them apart (colour, shape, size,
position), in the prompt language's words. ``*_HELD_OUT`` phrasings never appear in training.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from unitok.data.shapes import BACKGROUNDS, COLORS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject
from unitok.data.shapes_language import BACKGROUND_WORDS, SHAPE_WORDS, Words, _pick

QUESTION_KINDS = ("count", "count shape", "count color", "color at", "shape at", "size at", "background", "exists",
                  "where", "relation")
EDIT_KINDS = ("recolor", "reshape", "resize", "move", "add", "remove", "background")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    kind: str


@dataclass(frozen=True)
class Edit:
    instruction: str
    before: Scene
    after: Scene
    kind: str
    touched: str | None  # the position of the object the edit changes (None: the background, or a new object)


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

_COUNT = ("how many shapes are there", "how many objects are there", "how many things are in the picture",
          "count the shapes", "what is the number of shapes", "how many shapes do you see")
_COUNT_HELD_OUT = ("tell me how many objects the image contains", "number of shapes in this image")


def _number(n: int) -> str:
    return str(n)


def ask(scene: Scene, rng: np.random.Generator, kind: str | None = None, held_out: bool = False) -> Question:
    """A question of ``kind`` (default: any) about ``scene`` and its answer."""
    kind = kind or _pick(rng, QUESTION_KINDS)
    words = Words(rng)
    asked = _QUESTIONS[kind](scene, words, held_out)
    if asked is None:  # nothing of this kind has one answer here ("where" of an object that has a twin)
        kind, asked = "count", _count(scene, words, held_out)
    q, answer = asked
    q = q.strip()
    if rng.random() < 0.7:
        q += "?"
    if rng.random() < 0.15:
        q = q[:1].upper() + q[1:]
    return Question(q, answer, kind)


def _count(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    return _pick(words.rng, _COUNT_HELD_OUT if held_out else _COUNT), _number(len(scene.objects))


def _count_shape(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    shape = _pick(words.rng, SHAPES)
    plural = _pick(words.rng, SHAPE_WORDS[shape])[1]
    frames = ("how many {} are there", "count the {}", "how many {} do you see", "how many {} are in the image") \
        if not held_out else ("what number of {} can be found", "{}: how many")
    return _pick(words.rng, frames).format(plural), _number(sum(o.shape == shape for o in scene.objects))


def _count_color(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    color = _pick(words.rng, list(COLORS)) if words.rng.random() < 0.5 else _pick(words.rng, scene.objects).color
    noun = words.noun(None, plural=True)
    frames = ("how many {} {} are there", "count the {} {}", "how many {} {} do you see") \
        if not held_out else ("what number of {} {} can be found", "tell me the count of {} {}")
    return _pick(words.rng, frames).format(words.color(color), noun), \
        _number(sum(o.color == color for o in scene.objects))


def _at(scene: Scene, words: Words) -> tuple[str, ShapeObject | None]:
    occupied = {o.position: o for o in scene.objects}
    position = _pick(words.rng, list(occupied)) if words.rng.random() < 0.8 else _pick(words.rng, POSITIONS)
    return words.position(position), occupied.get(position)


def _color_at(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    where, obj = _at(scene, words)
    frames = ("what color is the shape {}", "what colour is the object {}", "which color is {}",
              "what is the color of the thing {}") if not held_out else ("the shape {} has which colour",
                                                                          "name the colour found {}")
    return _pick(words.rng, frames).format(where), obj.color if obj else "nothing"


def _shape_at(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    where, obj = _at(scene, words)
    frames = ("what shape is {}", "which shape is {}", "what is {}", "what kind of shape is {}") \
        if not held_out else ("name the shape found {}", "the object {} is which shape")
    return _pick(words.rng, frames).format(where), obj.shape if obj else "nothing"


def _size_at(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    where, obj = _at(scene, words)
    frames = ("is the shape {} big or small", "what size is the object {}", "how big is the shape {}",
              "is the thing {} large or small") if not held_out else ("the object {} is of which size",
                                                                      "small or large: the shape {}")
    return _pick(words.rng, frames).format(where), obj.size if obj else "nothing"


def _background(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    frames = ("what color is the background", "what colour is the background", "which color is the background",
              "what is the background color") if not held_out else ("the backdrop is which colour",
                                                                    "name the colour behind the shapes")
    return _pick(words.rng, frames), scene.background


def _exists(scene: Scene, words: Words, held_out: bool) -> tuple[str, str]:
    if words.rng.random() < 0.5:
        obj = _pick(words.rng, scene.objects)
        color, shape = obj.color, obj.shape
    else:
        color, shape = _pick(words.rng, list(COLORS)), _pick(words.rng, SHAPES)
    size = None
    if words.rng.random() < 0.3:
        size = _pick(words.rng, list(SIZES))
    phrase = " ".join([*([words.size(size)] if size else []), words.color(color), words.noun(shape)])
    article = "an" if phrase[0] in "aeiou" else "a"
    frames = ("is there {} {}", "do you see {} {}", "does the picture have {} {}", "is there any {} {}") \
        if not held_out else ("can {} {} be found", "does {} {} appear anywhere")
    found = any(o.color == color and o.shape == shape and size in (None, o.size) for o in scene.objects)
    return _pick(words.rng, frames).format(article, phrase), "yes" if found else "no"


def _where(scene: Scene, words: Words, held_out: bool) -> tuple[str, str] | None:
    """"where is the blue circle?" about an object its other attributes tell apart."""
    for index in words.rng.permutation(len(scene.objects)):
        reference = refer(scene, int(index), words, attributes=("shape", "color", "size"))
        if reference is not None:
            frames = ("where is {}", "in which position is {}", "where can i find {}", "which cell is {} in") \
                if not held_out else ("locate {}", "the position of {} is what")
            return _pick(words.rng, frames).format(reference), scene.objects[int(index)].position
    return None


_RELATION_QUESTIONS = {"left of": lambda a, b: a[0] < b[0], "right of": lambda a, b: a[0] > b[0],
                       "above": lambda a, b: a[1] < b[1], "below": lambda a, b: a[1] > b[1]}


def _relation(scene: Scene, words: Words, held_out: bool) -> tuple[str, str] | None:
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
    frames = ("what is {} {}", "which shape is {} {}", "what do you see {} {}") if not held_out else \
        ("name the object {} {}", "tell me what lies {} {}")
    text = _pick(words.rng, frames).format(phrase, refer(scene, index, words))
    return text, _answer_object(hits[0]) if hits else "nothing"


_QUESTIONS = {"count": _count, "count shape": _count_shape, "count color": _count_color, "color at": _color_at,
              "shape at": _shape_at, "size at": _size_at, "background": _background, "exists": _exists,
              "where": _where, "relation": _relation}


# ---------------------------------------------------------------------------------------------
# Edits


def instruct(scene: Scene, rng: np.random.Generator, kind: str | None = None, held_out: bool = False) -> Edit:
    """An edit of ``kind`` (default: any that applies to ``scene``) with an instruction saying it."""
    kinds = [k for k in EDIT_KINDS if _applies(k, scene)]
    kind = kind if kind in kinds else _pick(rng, kinds)
    words = Words(rng)
    text, after, touched = _EDITS[kind](scene, words, held_out)
    if rng.random() < 0.15:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.2:
        text += "."
    return Edit(text, scene, after, kind, touched)


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


def _recolor(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, str]:
    index, obj, ref = _target(scene, words)
    color = _pick(words.rng, [c for c in COLORS if c != obj.color])
    word = words.color(color)
    frames = ("make {} {}", "color {} {}", "recolor {} to {}", "change the color of {} to {}", "paint {} {}",
              "turn {} {}") if not held_out else ("i want {} to be {} instead", "{} should become {}")
    return _pick(words.rng, frames).format(ref, word), _changed(scene, index, color=color), obj.position


def _reshape(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, str]:
    index, obj, ref = _target(scene, words)
    shape = _pick(words.rng, [s for s in SHAPES if s != obj.shape])
    noun = words.noun(shape)
    article = "an" if noun[0] in "aeiou" else "a"
    frames = ("turn {} into {} {}", "change {} to {} {}", "replace {} with {} {}", "make {} {} {}") \
        if not held_out else ("i want {} to be {} {} instead", "{} should become {} {}")
    text = _pick(words.rng, frames).format(ref, article, noun)
    return text, _changed(scene, index, shape=shape), obj.position


def _resize(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, str]:
    index, obj, ref = _target(scene, words)
    size = "small" if obj.size == "large" else "large"
    if held_out:
        text = _pick(words.rng, ("i want {} to be {} instead", "{} should become {}")).format(ref, words.size(size))
    elif words.rng.random() < 0.5:
        verb = _pick(words.rng, ("shrink {}", "make {} smaller") if size == "small" else
                     ("enlarge {}", "make {} bigger", "make {} larger", "grow {}"))
        text = verb.format(ref)
    else:
        text = _pick(words.rng, ("make {} {}", "resize {} to {}", "change {} to {}")).format(ref, words.size(size))
    return text, _changed(scene, index, size=size), obj.position


def _move(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, str]:
    index, obj, ref = _target(scene, words)
    free = [p for p in POSITIONS if p not in {o.position for o in scene.objects}]
    position = _pick(words.rng, free)
    frames = ("move {} {}", "put {} {}", "shift {} {}", "place {} {}", "slide {} over {}") \
        if not held_out else ("relocate {} so it sits {}", "{} belongs {}")
    text = _pick(words.rng, frames).format(ref, words.position(position))
    return text, _changed(scene, index, position=position), obj.position


def _add(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, None]:
    free = [p for p in POSITIONS if p not in {o.position for o in scene.objects}]
    new = ShapeObject(_pick(words.rng, free), _pick(words.rng, list(SIZES)), _pick(words.rng, list(COLORS)),
                      _pick(words.rng, SHAPES))
    phrase = f"{words.size(new.size)} {words.color(new.color)} {words.noun(new.shape)}"
    article = "an" if phrase[0] in "aeiou" else "a"
    frames = ("add {} {} {}", "put {} {} {}", "draw {} {} {}", "place {} {} {}", "insert {} {} {}") \
        if not held_out else ("i want {} {} {} as well", "there should also be {} {} {}")
    text = _pick(words.rng, frames).format(article, phrase, words.position(new.position))
    return text, Scene(scene.background, (*scene.objects, new)), None


def _remove(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, str]:
    index, obj, ref = _target(scene, words)
    frames = ("remove {}", "delete {}", "take away {}", "get rid of {}", "erase {}") \
        if not held_out else ("i no longer want {}", "{} should disappear")
    objects = tuple(o for i, o in enumerate(scene.objects) if i != index)
    return _pick(words.rng, frames).format(ref), Scene(scene.background, objects), obj.position


def _background_edit(scene: Scene, words: Words, held_out: bool) -> tuple[str, Scene, None]:
    background = _pick(words.rng, [b for b in BACKGROUNDS if b != scene.background])
    word = _pick(words.rng, BACKGROUND_WORDS[background])
    frames = ("make the background {}", "change the background to {}", "set the background to {}",
              "use a {} background", "turn the background {}") \
        if not held_out else ("i want the backdrop to be {}", "the background should become {}")
    return _pick(words.rng, frames).format(word), Scene(background, scene.objects), None


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
