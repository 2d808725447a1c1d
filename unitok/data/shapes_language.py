"""The Shapes prompt language: what a prompt may state about a scene, many ways to say it, and
reading it back. ``describe`` draws a prompt (and the ``SceneSpec`` it states) for a scene from a
phrasing family; ``parse_prompt`` reads any family back; ``normal_form`` is the one canonical
wording of a spec (the full caption when everything is stated). The language is below.

Meaning. A ``SceneSpec`` lists every object of the scene (a prompt never leaves one out: the scene
has exactly as many objects as the prompt names), each with any of size, colour, shape and
position stated; optionally the background; optionally relations between objects instead of
positions: "above" / "below" (a row higher / lower, any column), "left of" / "right of" (a
column to the left / right, any row), "next to" (the same row, neighbouring columns: "side by
side", "beside"), and for all objects at once "in a row" (one row) or "in a column" (one column).
Whatever a prompt leaves out may be anything.

Wording. Attributes have many words (big/large/huge/giant, tiny/little/small/mini, violet for
purple, turquoise/aqua for cyan, disc/disk for circle, cross/plus sign for plus, grey/gray,
centre/center, "upper-left corner", "middle of the top row", "at left", ...), counts come in
words or digits ("two red circles", "3 squares"), objects are joined by commas, semicolons,
"and", "plus", "as well as", "with" or new lines, a background may come first, last, in the middle
or not at all, and a filler may frame it all ("please draw ...", "an image of ...", "I'd like ...").
Case, end punctuation and (in training prompts) one light typo vary too.

Families. A family is one way to put a prompt together (its clause order and frame).
``TRAIN_FAMILIES`` are what training data is made of; ``HELD_OUT_FAMILIES`` are never in a
training shard and measure whether a model learned the language or its generator.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from unitok.data.shapes import POSITIONS, Scene, ShapeObject

# ---------------------------------------------------------------------------------------------
# Meaning

PAIR_RELATIONS = ("above", "below", "left of", "right of", "next to")
GROUP_RELATIONS = ("in a row", "in a column")  # over all of a spec's objects
ORDINALS = ("first", "second", "third")


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt states about one object; None: not stated (may be anything)."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None
    position: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return all(getattr(self, name) in (None, getattr(obj, name)) for name in ("size", "color", "shape", "position"))

    @property
    def stated(self) -> tuple[str, ...]:
        return tuple(name for name in ("size", "color", "shape", "position") if getattr(self, name) is not None)


@dataclass(frozen=True)
class Relation:
    kind: str  # one of PAIR_RELATIONS (two objects) or GROUP_RELATIONS (every object of the spec)
    objects: tuple[int, ...]  # indices into SceneSpec.objects

    def holds(self, cells: Sequence[tuple[int, int]]) -> bool:
        """Whether the relation holds for objects at these (col, row) cells."""
        chosen = [cells[i] for i in self.objects]
        if self.kind == "in a row":
            return len({row for _, row in chosen}) == 1
        if self.kind == "in a column":
            return len({col for col, _ in chosen}) == 1
        (col_a, row_a), (col_b, row_b) = chosen
        return {
            "above": row_a < row_b, "below": row_a > row_b, "left of": col_a < col_b, "right of": col_a > col_b,
            "next to": row_a == row_b and abs(col_a - col_b) == 1,
        }[self.kind]


@dataclass(frozen=True)
class SceneSpec:
    """Everything a prompt states about a scene (see the module docstring for the meaning)."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    relations: tuple[Relation, ...] = ()

    def satisfied_by(self, scene: Scene | None) -> bool:
        """True when the scene has these objects (some assignment of them to the scene's objects
        matches every stated attribute and relation) and the stated background."""
        if scene is None or len(scene.objects) != len(self.objects):
            return False
        if self.background not in (None, scene.background):
            return False
        for order in itertools.permutations(scene.objects):
            if all(spec.matches(obj) for spec, obj in zip(self.objects, order, strict=True)) and \
                    all(relation.holds([obj.cell for obj in order]) for relation in self.relations):
                return True
        return False

    @property
    def complete(self) -> bool:
        """Every attribute, position and the background stated: a spec of one scene exactly."""
        return self.background is not None and all(len(o.stated) == 4 for o in self.objects)

    def scene(self) -> Scene | None:
        """The one scene a complete spec states (None for a partial or impossible one)."""
        if not self.complete:
            return None
        try:
            return Scene(self.background, tuple(ShapeObject(o.position, o.size, o.color, o.shape) for o in self.objects))
        except ValueError:
            return None

    @classmethod
    def of(cls, scene: Scene) -> SceneSpec:
        """The complete spec of a scene."""
        return cls(tuple(ObjectSpec(o.size, o.color, o.shape, o.position) for o in scene.objects), scene.background)

    def canonical(self) -> SceneSpec:
        """The same meaning in one form, so equal meanings compare equal: "below" and "right of"
        turned round into "above" and "left of", "next to" in index order, objects sorted
        (positioned ones in cell order) and, among alike objects, the order that numbers the
        relations lowest."""
        flipped = {"below": "above", "right of": "left of"}
        relations = [Relation(flipped[r.kind], r.objects[::-1]) if r.kind in flipped else r for r in self.relations]

        def key(obj: ObjectSpec) -> tuple:
            return (POSITIONS.index(obj.position) if obj.position else 9, obj.size or "", obj.color or "",
                    obj.shape or "")

        best = None
        for order in itertools.permutations(range(len(self.objects))):
            keys = tuple(key(self.objects[i]) for i in order)
            new_index = {old: new for new, old in enumerate(order)}
            renumbered = tuple(sorted(
                Relation(r.kind, tuple(sorted(new_index[i] for i in r.objects)) if r.kind in ("next to", *GROUP_RELATIONS)
                         else tuple(new_index[i] for i in r.objects)) for r in relations))
            candidate = (keys, tuple((r.kind, r.objects) for r in renumbered), order, renumbered)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return SceneSpec(tuple(self.objects[i] for i in best[2]), self.background, best[3])

    def same_meaning(self, other: SceneSpec | None) -> bool:
        return other is not None and self.canonical() == other.canonical()


# ---------------------------------------------------------------------------------------------
# Words. Every list's first entry is the canonical word (``normal_form`` uses it).

SIZE_WORDS = {"small": ("small", "tiny", "little", "mini"), "large": ("large", "big", "huge", "giant")}
COLOR_WORDS = {
    "red": ("red",), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",), "purple": ("purple", "violet"),
    "orange": ("orange",), "cyan": ("cyan", "turquoise", "aqua"), "pink": ("pink",),
}
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disc", "discs"), ("disk", "disks")),
    "square": (("square", "squares"),),
    "triangle": (("triangle", "triangles"),),
    "plus": (("plus", "pluses"), ("plus sign", "plus signs"), ("cross", "crosses")),
}
GENERIC_WORDS = (("shape", "shapes"), ("object", "objects"), ("thing", "things"), ("figure", "figures"),
                 ("item", "items"))
BACKGROUND_WORDS = {"white": ("white",), "black": ("black",), "gray": ("gray", "grey")}
NUMBER_WORDS = {1: ("one", "1", "a single"), 2: ("two", "2", "a pair of"), 3: ("three", "3")}
_VERTICAL = {0: ("top", "upper"), 1: ("middle", "center", "centre"), 2: ("bottom", "lower")}
_HORIZONTAL = {0: ("left",), 1: ("middle", "center", "centre"), 2: ("right",)}

# Words a model of this domain cannot draw, for out-of-domain prompts; the two lists are disjoint,
# so a model can be tested on unknown words it never saw flagged.
UNKNOWN_SHAPES = ("star", "hexagon", "heart", "pentagon", "oval", "rectangle", "diamond", "crescent", "arrow",
                  "ring", "octagon", "ellipse", "cat", "dog", "house", "tree", "car", "bird", "flower", "fish")
UNKNOWN_SHAPES_HELD_OUT = ("cube", "sphere", "moon", "sun", "cloud", "rhombus", "spiral", "horse", "boat", "apple")
UNKNOWN_COLORS = ("brown", "magenta", "teal", "navy", "beige", "maroon", "gold", "silver", "white", "black")
UNKNOWN_COLORS_HELD_OUT = ("lime", "indigo", "olive", "crimson", "gray")


def position_phrases(position: str) -> list[str]:
    """Every bare wording of a position ("top left", "upper-left corner", "middle of the top row", ...)."""
    col, row = POSITIONS.index(position) % 3, POSITIONS.index(position) // 3
    vertical, horizontal = _VERTICAL[row], _HORIZONTAL[col]
    if row != 1 and col != 1:  # a corner
        phrases = [f"{v}{sep}{h}" for v in vertical for h in horizontal for sep in (" ", "-")]
        return phrases + [f"{p} corner" for p in phrases]
    if row == 1 and col == 1:
        return ["center", "middle", "centre", "very middle", "middle of the image", "center of the picture"]
    if row == 1:  # left / right
        side = horizontal[0]
        return [side, f"middle {side}", f"center {side}", f"{side} side", f"{side} edge", f"middle of the {side} side"]
    edge = vertical[0]  # top / bottom
    return [edge, f"{edge} center", f"{edge} middle", f"{edge} centre", f"{vertical[1]} middle",
            f"middle of the {edge} row", f"{edge} edge"]


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


@dataclass
class Words:
    """Random word choices for one prompt (so a prompt keeps to one word for a thing, mostly)."""

    rng: np.random.Generator

    def size(self, size: str) -> str:
        return _pick(self.rng, SIZE_WORDS[size])

    def color(self, color: str) -> str:
        return _pick(self.rng, COLOR_WORDS[color])

    def noun(self, shape: str | None, plural: bool = False) -> str:
        forms = _pick(self.rng, SHAPE_WORDS[shape] if shape is not None else GENERIC_WORDS)
        return forms[1] if plural else forms[0]

    def position(self, position: str, bare: bool = False) -> str:
        phrase = _pick(self.rng, position_phrases(position))
        if bare:
            return phrase
        if phrase in ("left", "right") and self.rng.random() < 0.3:
            return f"at {phrase}"
        if phrase in ("top", "bottom") and self.rng.random() < 0.2:
            return {"top": "up top", "bottom": "down at the bottom"}[phrase]
        preposition = "in the" if phrase.endswith("corner") or "middle" in phrase or phrase in ("center", "centre") \
            else _pick(self.rng, ("at the", "on the", "at the", "in the"))
        if phrase.endswith("side") or phrase.endswith("edge"):
            preposition = _pick(self.rng, ("on the", "at the", "along the"))
        return f"{preposition} {phrase}"

    def background(self, background: str, style: str = "any") -> str:
        word = _pick(self.rng, BACKGROUND_WORDS[background])
        trailing = (f"on a {word} background", f"on {word}", f"against a {word} background", f"with a {word} background",
                    f"on a {word} backdrop", f"over a {word} canvas", f"{word} background", f"background {word}",
                    f"the background is {word}", f"background: {word}", f"on a plain {word} background")
        leading = (f"a {word} background with", f"on a {word} background,", f"{word} background:",
                   f"against {word},", f"a {word} canvas with")
        return _pick(self.rng, leading if style == "leading" else trailing)

    def count(self, n: int) -> str:
        return _pick(self.rng, NUMBER_WORDS[n])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# A prompt's parts: mentions of one object, or of several alike ones ("two red circles").


@dataclass
class Mention:
    """Objects mentioned together: indices into the spec, sharing size/colour/shape words."""

    indices: list[int]
    spec: ObjectSpec  # the shared attributes (position per object lives in the spec itself)


def noun_phrase(spec: ObjectSpec, words: Words, count: int = 1, article: bool = True,
                color_after: bool = False) -> str:
    """"a big red circle", "two red circles", "a shape", "3 tiny squares", "a circle in red" ..."""
    adjectives = []
    if spec.size is not None:
        adjectives.append(words.size(spec.size))
    color = words.color(spec.color) if spec.color is not None else None
    if color is not None and not color_after:
        adjectives.append(color)
    noun = words.noun(spec.shape, plural=count > 1)
    core = " ".join([*adjectives, noun])
    if color is not None and color_after:
        core += _pick(words.rng, (f" in {color}", f" colored {color}", f" coloured {color}", f" that is {color}"))
    if count > 1:
        return f"{words.count(count)} {core}"
    if not article:
        return core
    lead = _pick(words.rng, ("a", "a", "a", "one"))
    return f"{_article(core) if lead == 'a' else lead} {core}"


def _mentions(spec: SceneSpec, rng: np.random.Generator, allow_groups: bool) -> list[Mention]:
    """Objects in a random order, alike ones (same stated size/colour/shape, no relation) grouped
    into one counted mention when ``allow_groups`` (and the dice) say so."""
    order = list(rng.permutation(len(spec.objects))) if rng.random() < 0.5 else list(range(len(spec.objects)))
    related = {i for r in spec.relations if r.kind in PAIR_RELATIONS for i in r.objects}
    mentions: list[Mention] = []
    for index in order:
        obj = spec.objects[index]
        shared = replace(obj, position=None)
        group = next((m for m in mentions if allow_groups and m.spec == shared and index not in related
                      and not (set(m.indices) & related)), None)
        if group is not None and rng.random() < 0.8:
            group.indices.append(index)
        else:
            mentions.append(Mention([index], shared))
    return mentions


def _mention_text(mention: Mention, spec: SceneSpec, words: Words, *, color_after: bool = False,
                  position_first: bool = False, with_positions: bool = True) -> str:
    """One mention with the positions of its objects ("two red circles at the top and the center")."""
    phrase = noun_phrase(mention.spec, words, count=len(mention.indices), color_after=color_after)
    positions = [spec.objects[i].position for i in mention.indices]
    if not with_positions or all(p is None for p in positions):
        return phrase
    if len(positions) == 1:
        where = words.position(positions[0])
        return f"{where} {phrase}" if position_first else f"{phrase} {where}"
    placed = [p for p in positions if p is not None]
    if len(placed) != len(positions):  # some positioned, some not: "two red circles, one at the top"
        return f"{phrase}, one {words.position(placed[0])}" if len(placed) == 1 else phrase
    wheres = [words.position(p) for p in placed]
    if words.rng.random() < 0.5:
        return f"{phrase}, " + " and ".join(f"one {w}" for w in wheres)
    rest = [w.split(" ", 2)[-1] if w.startswith(("at the", "in the", "on the")) and words.rng.random() < 0.5 else w
            for w in wheres[1:]]
    return f"{phrase} " + _join([wheres[0], *rest])  # positions joined by "and" only: "plus" would read as a shape


def _join(parts: Sequence[str], words: Words | None = None) -> str:
    if len(parts) == 1:
        return parts[0]
    last = " and " if words is None else _pick(words.rng, (" and ", " and ", ", and ", " plus ", " as well as "))
    if last == " plus " and not re.match(r"(?:a|an|one|two|three|\d)\b", parts[-1]):
        last = " and "  # "plus" joins only before an article or a number; otherwise it reads as the shape
    return ", ".join(parts[:-1]) + last + parts[-1]


def _separated(parts: Sequence[str], words: Words) -> str:
    style = _pick(words.rng, ("join", "join", "join", "; ", ", ", "\n", " and "))
    return _join(parts, words) if style == "join" else style.join(parts)


def _relation_clauses(spec: SceneSpec, words: Words) -> tuple[list[str], set[int]]:
    """Texts of the pair relations ("a red circle above a blue square") and the objects they mention."""
    texts, used = [], set()
    for relation in spec.relations:
        if relation.kind not in PAIR_RELATIONS:
            continue
        a, b = relation.objects
        first = _mention_text(Mention([a], replace(spec.objects[a], position=None)), spec, words, with_positions=False)
        second = _mention_text(Mention([b], replace(spec.objects[b], position=None)), spec, words, with_positions=False)
        kind = relation.kind
        if kind == "next to" and words.rng.random() < 0.4:
            texts.append(f"{first} side by side with {second}")
        else:
            verb = _pick(words.rng, {
                "above": ("above", "over", "on top of", "directly above", "higher than"),
                "below": ("below", "under", "beneath", "underneath", "lower than"),
                "left of": ("to the left of", "left of", "on the left of"),
                "right of": ("to the right of", "right of", "on the right of"),
                "next to": ("next to", "beside", "alongside", "right next to"),
            }[kind])
            link = _pick(words.rng, ("", "", "is ", "placed ", "sitting ")) if texts or words.rng.random() < 0.3 else ""
            texts.append(f"{first} {link}{verb} {second}")
        used |= {a, b}
    return texts, used


def _group_suffix(spec: SceneSpec, words: Words) -> str:
    kinds = [r.kind for r in spec.relations if r.kind in GROUP_RELATIONS]
    if not kinds:
        return ""
    return " " + _pick(words.rng, {"in a row": ("in a row", "in one row", "all in a row", "lined up in a row",
                                                "in a horizontal line"),
                                   "in a column": ("in a column", "stacked vertically", "in one column",
                                                   "stacked in a column")}[kinds[0]])


# ---------------------------------------------------------------------------------------------
# Families: (spec, words) -> text


def _objects_text(spec: SceneSpec, words: Words, **style) -> str:
    if len(spec.objects) == 2 and spec.relations == (Relation("next to", (0, 1)),) and \
            replace(spec.objects[0], position=None) == replace(spec.objects[1], position=None):
        return noun_phrase(spec.objects[0], words, count=2) + " side by side"
    mentions = _mentions(spec, words.rng, allow_groups=True)
    relations, used = _relation_clauses(spec, words)
    rest = [_mention_text(m, spec, words, **style) for m in mentions if not set(m.indices) & used]
    parts = relations + rest
    if words.rng.random() < 0.5:
        words.rng.shuffle(parts)
    return _separated(parts, words) + _group_suffix(spec, words)


def _plain(spec: SceneSpec, words: Words) -> str:
    body = _objects_text(spec, words)
    if spec.background is None:
        return body
    background = words.background(spec.background)
    return f"{body} {background}" if words.rng.random() < 0.8 else f"{body}, {background}"


def _position_first(spec: SceneSpec, words: Words) -> str:
    body = _objects_text(spec, words, position_first=True)
    if spec.background is None:
        return body
    return f"{words.background(spec.background, 'leading')} {body}" if words.rng.random() < 0.5 \
        else f"{body}; {words.background(spec.background)}"


def _there_is(spec: SceneSpec, words: Words) -> str:
    body = _objects_text(spec, words)
    verb = "there are" if len(spec.objects) > 1 else _pick(words.rng, ("there is", "there's"))
    text = f"{verb} {body}"
    if spec.background is not None:
        text += _pick(words.rng, (f". the background is {_pick(words.rng, BACKGROUND_WORDS[spec.background])}",
                                  f" {words.background(spec.background)}"))
    return text


def _background_first(spec: SceneSpec, words: Words) -> str:
    body = _objects_text(spec, words)
    if spec.background is None:
        return _pick(words.rng, (f"a picture with {body}", f"a canvas with {body}", f"an image with {body}"))
    return f"{words.background(spec.background, 'leading')} {body}"


def _color_after(spec: SceneSpec, words: Words) -> str:
    body = _objects_text(spec, words, color_after=True)
    if spec.background is None:
        return body
    return f"{body}, {words.background(spec.background)}"


def _terse(spec: SceneSpec, words: Words) -> str:
    parts = []
    for mention in _mentions(spec, words.rng, allow_groups=False):
        index = mention.indices[0]
        obj = spec.objects[index]
        bits = [words.size(obj.size)] if obj.size else []
        bits += [words.color(obj.color)] if obj.color else []
        bits.append(words.noun(obj.shape))
        if obj.position is not None:
            bits.append(words.position(obj.position, bare=True))
        parts.append(" ".join(bits))
    text = _pick(words.rng, (", ", "; ", " / ", "\n")).join(parts) if not spec.relations else _objects_text(spec, words)
    if spec.background is not None:
        text += _pick(words.rng, (f"; {spec.background} background", f", {spec.background} bg",
                                  f" - {_pick(words.rng, BACKGROUND_WORDS[spec.background])} background",
                                  f", background {spec.background}"))
    return text


def _framed(spec: SceneSpec, words: Words) -> str:
    inner = _pick(words.rng, (_plain, _there_is, _color_after))(spec, words)
    frame = _pick(words.rng, ("please draw {}", "draw {}", "i'd like {}", "can you draw {}", "make {}", "show me {}",
                              "create {}", "generate {}", "render {}", "an image of {}", "a picture of {}",
                              "a drawing of {}", "{}, please", "paint {}", "i want {}", "give me {}"))
    return frame.format(inner)


# Held out: never in training data.
def _predicative(spec: SceneSpec, words: Words) -> str:
    """"the circle in the top left is big and red; the square ... is small and blue; all on white"."""
    if spec.relations:
        return "; ".join(_objects_text(spec, words).split(", ")) + _bg_tail(spec, words, "; everything is on {}")
    clauses = []
    for obj in spec.objects:
        subject = f"the {words.noun(obj.shape)}"
        if obj.position is not None:
            subject += f" {words.position(obj.position)}"
        traits = [words.size(obj.size)] if obj.size else []
        traits += [words.color(obj.color)] if obj.color else []
        clauses.append(f"{subject} is {' and '.join(traits)}" if traits else f"{subject} is there")
    return "; ".join(clauses) + _bg_tail(spec, words, "; everything is on {}")


def _numbered(spec: SceneSpec, words: Words) -> str:
    """"1) big red circle, top left 2) small blue square, center - background: white"."""
    mentions = _mentions(spec, words.rng, allow_groups=False)
    if spec.relations:
        return "1) " + _objects_text(spec, words) + _bg_tail(spec, words, " - background: {}")
    items = []
    for number, mention in enumerate(mentions, start=1):
        obj = spec.objects[mention.indices[0]]
        item = noun_phrase(replace(obj, position=None), words, article=False)
        if obj.position is not None:
            item += f", {words.position(obj.position, bare=True)}"
        items.append(f"{number}) {item}")
    return " ".join(items) + _bg_tail(spec, words, " - background: {}")


def _has(spec: SceneSpec, words: Words) -> str:
    """"the top left has a big red circle, the center has a small blue square, and the background is white"."""
    if spec.relations or any(o.position is None for o in spec.objects):
        return "the picture has " + _objects_text(spec, words) + _bg_tail(spec, words, ", and the background is {}")
    parts = [f"the {words.position(o.position, bare=True)} has {noun_phrase(replace(o, position=None), words)}"
             for o in spec.objects]
    return ", ".join(parts) + _bg_tail(spec, words, ", and the background is {}")


def _put_then(spec: SceneSpec, words: Words) -> str:
    """"put a big red circle in the top left, then a small blue square in the middle, on white"."""
    parts = [_mention_text(m, spec, words) for m in _mentions(spec, words.rng, allow_groups=True)]
    if spec.relations:
        parts = [_objects_text(spec, words)]
    text = _pick(words.rng, ("put ", "place ", "could you sketch ")) + ", then ".join(parts)
    return text + _bg_tail(spec, words, ", all on {}")


def _bg_tail(spec: SceneSpec, words: Words, pattern: str) -> str:
    return "" if spec.background is None else pattern.format(_pick(words.rng, BACKGROUND_WORDS[spec.background]))


Family = Callable[[SceneSpec, Words], str]
TRAIN_FAMILIES: dict[str, Family] = {
    "plain": _plain, "position first": _position_first, "there is": _there_is, "background first": _background_first,
    "colour after": _color_after, "terse": _terse, "framed": _framed,
}
HELD_OUT_FAMILIES: dict[str, Family] = {
    "predicative": _predicative, "numbered": _numbered, "has": _has, "put then": _put_then,
}
FAMILIES: dict[str, Family] = {**TRAIN_FAMILIES, **HELD_OUT_FAMILIES}


# ---------------------------------------------------------------------------------------------
# Drawing a spec and a prompt for a scene


DETAILS = ("full", "partial", "relations")


def choose_spec(scene: Scene, rng: np.random.Generator, detail: str) -> SceneSpec:
    """A spec the scene satisfies: ``full`` (the complete spec), ``partial`` (attributes, positions
    or the background left out) or ``relations`` (some positions replaced by relations)."""
    full = SceneSpec.of(scene)
    if detail == "full":
        return full
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
    objects = list(full.objects)
    relations: list[Relation] = []
    if detail == "relations" and len(objects) >= 2:
        relations = _relations_that_hold(scene, rng)
        related = {i for r in relations for i in r.objects}
        objects = [replace(o, position=None) if i in related else o for i, o in enumerate(objects)]
    drop = lambda p: rng.random() < p  # noqa: E731
    objects = [ObjectSpec(None if drop(0.35) else o.size, None if drop(0.3) else o.color,
                          None if drop(0.3) else o.shape, None if o.position is None or drop(0.45) else o.position)
               for o in objects]
    background = None if drop(0.5) else scene.background
    if detail == "partial" and background is not None and objects == list(full.objects):
        objects[-1] = replace(objects[-1], size=None)  # a partial spec leaves something out
    return SceneSpec(tuple(objects), background, tuple(relations))


def _relations_that_hold(scene: Scene, rng: np.random.Generator) -> list[Relation]:
    cells = [o.cell for o in scene.objects]
    group = [kind for kind in GROUP_RELATIONS if Relation(kind, tuple(range(len(cells)))).holds(cells)]
    if group and rng.random() < 0.5:
        return [Relation(group[0], tuple(range(len(cells))))]
    pairs = [(a, b) for a in range(len(cells)) for b in range(len(cells)) if a != b]
    rng.shuffle(pairs)
    for a, b in pairs:
        kinds = [k for k in PAIR_RELATIONS if Relation(k, (a, b)).holds(cells)]
        if kinds:
            return [Relation(_pick(rng, kinds), (a, b))]
    return []


@dataclass(frozen=True)
class Prompt:
    text: str
    spec: SceneSpec
    family: str


def describe(scene: Scene, rng: np.random.Generator, *, family: str | None = None, detail: str | None = None,
             families: Sequence[str] = tuple(TRAIN_FAMILIES), noise: bool = True) -> Prompt:
    """A prompt for ``scene`` from ``family`` (default: one of ``families``) stating a ``detail``
    spec (default: full half the time). ``noise``: random case, end punctuation and, now and then,
    one typo, as people type."""
    family = family or _pick(rng, list(families))
    detail = detail or _pick(rng, ("full", "full", "partial", "relations"))
    spec = choose_spec(scene, rng, detail)
    text = " ".join(FAMILIES[family](spec, Words(rng)).split(" "))
    text = re.sub(r"[ \t]+", " ", text).strip()
    if noise:
        text = _noisy(text, rng)
    return Prompt(text, spec, family)


def _noisy(text: str, rng: np.random.Generator, typos: bool = True) -> str:
    if typos and rng.random() < 0.12:
        text = _typo(text, rng)
    case = rng.random()
    if case < 0.12:
        text = text[:1].upper() + text[1:]
    elif case < 0.2:
        text = text.title()
    elif case < 0.23:
        text = text.upper()
    if rng.random() < 0.2:
        text += _pick(rng, (".", "!", " ."))
    return text


def _typo(text: str, rng: np.random.Generator) -> str:
    """One light typo in a word of 5+ letters: a dropped, doubled or swapped letter."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long:
        return text
    i = _pick(rng, long)
    word, at = words[i], int(rng.integers(1, len(words[i]) - 1))
    kind = rng.integers(3)
    words[i] = (word[:at] + word[at + 1:] if kind == 0 else word[:at] + word[at] + word[at:] if kind == 1
                else word[:at - 1] + word[at] + word[at - 1] + word[at + 1:])
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# The normal form: one canonical wording of a spec (a full spec's is its canonical caption)


def normal_form(spec: SceneSpec) -> str:
    """"a large red circle at the top left and a blue shape, the first above the second on a white
    background": objects in canonical order with canonical words, what is not stated left out."""
    spec = spec.canonical()
    parts = []
    for obj in spec.objects:
        phrase = " ".join([w for w in (obj.size, obj.color) if w is not None] + [obj.shape or "shape"])
        parts.append(f"{_article(phrase)} {phrase}" + (f" at the {obj.position}" if obj.position else ""))
    text = _join(parts)
    for relation in spec.relations:
        if relation.kind in GROUP_RELATIONS:
            text += ", all " + {"in a row": "in one row", "in a column": "in one column"}[relation.kind]
        else:
            a, b = relation.objects
            text += f", the {ORDINALS[a]} {relation.kind} the {ORDINALS[b]}"
    if spec.background is not None:
        text += f" on a {spec.background} background"
    return text


# ---------------------------------------------------------------------------------------------
# Reading a prompt back


def _lookup(table: dict[str, Sequence[str]]) -> dict[str, str]:
    return {word: value for value, words in table.items() for word in words}


_SIZE = _lookup(SIZE_WORDS)
_COLOR = _lookup(COLOR_WORDS)
_SHAPE = {form: shape for shape, forms in SHAPE_WORDS.items() for pair in forms for form in pair}
_PLURAL_SHAPES = {pair[1] for forms in SHAPE_WORDS.values() for pair in forms}
_GENERIC = {form for pair in GENERIC_WORDS for form in pair}
_PLURAL_GENERIC = {pair[1] for pair in GENERIC_WORDS}
_NUMBERS = {"one": 1, "1": 1, "a single": 1, "single": 1, "two": 2, "2": 2, "a pair of": 2, "pair of": 2,
            "three": 3, "3": 3}
_POSITION = {phrase: position for position in POSITIONS for phrase in position_phrases(position)}
_POSITION.update({"up top": "top", "on top": "top", "down at the bottom": "bottom"})
_RELATION_WORDS = {
    "directly above": "above", "on top of": "above", "higher than": "above", "above": "above", "over": "above",
    "underneath": "below", "beneath": "below", "below": "below", "under": "below", "lower than": "below",
    "to the left of": "left of", "on the left of": "left of", "left of": "left of",
    "to the right of": "right of", "on the right of": "right of", "right of": "right of",
    "right next to": "next to", "next to": "next to", "beside": "next to", "alongside": "next to",
    "side by side with": "next to",
}
_GROUP_WORDS = {"lined up in a row": "in a row", "all in a row": "in a row", "in one row": "in a row",
                "in a row": "in a row", "in a horizontal line": "in a row", "stacked in a column": "in a column",
                "stacked vertically": "in a column", "in one column": "in a column", "in a column": "in a column",
                "side by side": "side by side"}


def _alternation(phrases) -> str:
    return "|".join(sorted((re.escape(p) for p in phrases), key=len, reverse=True))


_W = r"(?<![a-z0-9])(?:{})(?![a-z0-9])"
_BACKGROUND_RE = re.compile(
    r"(?:(?:on|against|over|with|all on|everything is on)\s+)?(?:an?\s+|the\s+)?(?:plain\s+)?(white|black|gray)"
    r"\s+(?:background|backdrop|canvas|bg)(?:\s+with)?"
    r"|(?:the\s+)?background(?:\s+is|\s*:|\s+color)?\s+(white|black|gray)"
    r"|(?:on|against|all on|everything is on)\s+(white|black|gray)(?![a-z])"
)
_POSITION_RE = re.compile(_W.format(_alternation(_POSITION)))
_RELATION_RE = re.compile(r"\s(?:is\s+|placed\s+|sitting\s+)?(" + _alternation(_RELATION_WORDS) + r")\s")
_ORDINAL_RELATION_RE = re.compile(
    r"the (first|second|third) (above|below|left of|right of|next to) the (first|second|third)")
_GROUP_RE = re.compile(_W.format(_alternation(_GROUP_WORDS)) + r"(?! with)")
# "plus" joins objects only before an article or a number ("a red circle plus a blue square");
# otherwise it is the shape.
_SEPARATOR_RE = re.compile(r"\s*(?:,|;|:|\n|/|\s-\s|\.\s|\bthen\b|\band\b|\bas well as\b|\b\d\)"
                           r"|\bplus(?=[ \t]+(?:a|an|one|two|three|\d)\b(?!\))))\s*")
_FILLER_RE = re.compile(
    r"^(?:please draw|draw|i'd like|can you draw|make|show me|create|generate|render|paint|i want|give me|"
    r"could you sketch|put|place|an image of|a picture of|a drawing of|there are|there is|there's|"
    r"a picture with|a canvas with|an image with|the picture has|an image showing|a picture showing)\s+")
_ANNOUNCED_COUNT_RE = re.compile(r"^(?:one|two|three|[123])\s+(?:shapes?|objects?|things?|figures?|items?)[\s,]*:")
_STOPWORDS = re.compile(r"\b(?:in|at|on|along|towards|down|the|of|is|are|colored|that|there|has|with|all|sits|"
                        r"placed|sitting|very|and)\b")


def normalize(text: str) -> str:
    """Lower case, one spelling, spaced punctuation: what the parser (and a model's tokenizer) reads."""
    text = text.lower().replace("grey", "gray").replace("centre", "center").replace("colour", "color")
    text = re.sub(r"[!?]", " ", text)
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # top-left -> top left
    text = re.sub(r"[ \t]+", " ", text).strip(" .")
    return re.sub(r"\s*\n\s*", "\n", text)


@dataclass
class _Reading:
    """The objects read so far, and which of them still wait for a position or more attributes."""

    objects: list[ObjectSpec] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)  # the last mention's objects without a position

    def add(self, specs: list[ObjectSpec]) -> None:
        first = len(self.objects)
        self.objects += specs
        self.unplaced = [i for i in range(first, len(self.objects)) if self.objects[i].position is None]

    def place(self, position: str) -> bool:
        if not self.unplaced:
            return False
        index = self.unplaced.pop(0)
        self.objects[index] = replace(self.objects[index], position=position)
        return True

    def qualify(self, extra: ObjectSpec) -> bool:
        """Attributes said after the noun ("the circle ... is big and red"), for the last object."""
        if not self.objects:
            return False
        last = self.objects[-1]
        merged = {}
        for name in ("size", "color"):
            mine, theirs = getattr(last, name), getattr(extra, name)
            if mine is not None and theirs is not None and mine != theirs:
                return False
            merged[name] = mine if mine is not None else theirs
        self.objects[-1] = replace(last, **merged)
        return True


def parse_prompt(text: str) -> SceneSpec | None:
    """The spec a prompt of any family states; None when it does not read as one (an unknown word
    where an attribute should be, two colours for one object, ...)."""
    text = re.sub(r", please$", "", normalize(text))
    backgrounds = {next(g for g in m.groups() if g) for m in _BACKGROUND_RE.finditer(text)}
    if len(backgrounds) > 1:
        return None
    text = _BACKGROUND_RE.sub(" , ", text)
    text = _ANNOUNCED_COUNT_RE.sub("", text)  # "three shapes: a red circle, ..." lists them after the colon
    ordinal_relations = _ORDINAL_RELATION_RE.findall(text)
    text = _ORDINAL_RELATION_RE.sub(" , ", text)
    groups = {_GROUP_WORDS[m.group(0)] for m in _GROUP_RE.finditer(text)}
    text = _GROUP_RE.sub(" ", text)
    reading = _Reading()
    for chunk in _SEPARATOR_RE.split(text):
        chunk = chunk.strip()
        while _FILLER_RE.match(chunk):  # "please draw an image of ..."
            chunk = _FILLER_RE.sub("", chunk, count=1).strip()
        if not chunk or chunk in ("a", "one", "the", "all", "everything"):
            continue
        relation = _RELATION_RE.search(f" {chunk} ")
        if relation:
            first = _object_mention(f" {chunk} "[: relation.start()])
            second = _object_mention(f" {chunk} "[relation.end():])
            if first is None or second is None or len(first[0]) != 1 or len(second[0]) != 1 or first[1] or second[1]:
                return None
            reading.add(first[0] + second[0])
            reading.relations.append(Relation(_RELATION_WORDS[relation.group(1)],
                                              (len(reading.objects) - 2, len(reading.objects) - 1)))
            reading.unplaced = []
            continue
        mention = _object_mention(chunk)
        if mention is None:
            return None
        specs, partial = mention
        if partial == "position":
            if not reading.place(specs[0].position):
                return None
        elif partial == "attributes":
            if not reading.qualify(specs[0]):
                return None
        else:
            reading.add(specs)
    objects = reading.objects
    if not objects or len(objects) > 3:
        return None
    relations = list(reading.relations)
    for first, kind, second in ordinal_relations:
        a, b = ORDINALS.index(first), ORDINALS.index(second)
        if max(a, b) >= len(objects):
            return None
        relations.append(Relation(kind, (a, b)))
    for group in sorted(groups):
        if group == "side by side":  # two side by side are neighbours; three side by side, a row
            group = "next to" if len(objects) == 2 else "in a row"
        if len(objects) < 2:
            return None
        relations.append(Relation(group, (0, 1) if group == "next to" else tuple(range(len(objects)))))
    positions = [o.position for o in objects if o.position is not None]
    if len(positions) != len(set(positions)):
        return None
    return SceneSpec(tuple(objects), backgrounds.pop() if backgrounds else None, tuple(relations))


_NUMBER_RE = re.compile(_W.format(_alternation(_NUMBERS)))
_TOKEN_RE = re.compile(r"plus signs?|[a-z]+")


def _object_mention(chunk: str) -> tuple[list[ObjectSpec], str | None] | None:
    """What a chunk names: objects (one, or several alike: "two red circles at the top and the
    center"), a position alone ("one at the top", for the last mention) or attributes alone ("big",
    for the last object); with None, "position" or "attributes" saying which. None: not Shapes."""
    positions = [_POSITION[m.group(0)] for m in _POSITION_RE.finditer(chunk)]
    rest = _POSITION_RE.sub(" ", chunk)
    number = _NUMBER_RE.search(rest)
    count = _NUMBERS[number.group(0)] if number else None
    if number:
        rest = rest[: number.start()] + " " + rest[number.end():]
    rest = _STOPWORDS.sub(" ", rest)
    size = color = shape = None
    noun = plural = False
    for token in _TOKEN_RE.findall(rest):
        if token in ("a", "an"):
            continue
        if token in _SIZE and size in (None, _SIZE[token]):
            size = _SIZE[token]
        elif token in _COLOR and color in (None, _COLOR[token]):
            color = _COLOR[token]
        elif token in _SHAPE and not noun:
            shape, noun, plural = _SHAPE[token], True, token in _PLURAL_SHAPES
        elif token in _GENERIC and not noun:
            noun, plural = True, token in _PLURAL_GENERIC
        else:
            return None  # a word that is no attribute, or a second one of a kind: not the Shapes language
    if not noun:
        if count in (None, 1) and len(positions) == 1 and size is None and color is None:
            return [ObjectSpec(position=positions[0])], "position"
        if count is None and not positions and (size or color):
            return [ObjectSpec(size=size, color=color)], "attributes"
        return None
    if count is None:
        count = (len(positions) if len(positions) > 1 else 2) if plural else 1
    if len(positions) > count:
        return None
    base = ObjectSpec(size, color, shape)
    return [replace(base, position=p) for p in positions + [None] * (count - len(positions))], None


def parse_caption(text: str) -> Scene | None:
    """The scene a prompt states completely (every attribute, position and the background); None
    for a prompt that leaves something out or does not read as the Shapes language."""
    spec = parse_prompt(text)
    return None if spec is None or spec.relations else spec.scene()


def describe_unknown(scene: Scene, rng: np.random.Generator, held_out: bool = False) -> tuple[Prompt, str]:
    """A prompt for ``scene`` that asks for something this domain cannot draw (a star, a teal
    circle, a white square), and the unknown words. The spec is what remains drawable."""
    spec = choose_spec(scene, rng, "partial")
    index = int(rng.integers(len(spec.objects)))
    obj = spec.objects[index]
    shapes_, colors = (UNKNOWN_SHAPES_HELD_OUT, UNKNOWN_COLORS_HELD_OUT) if held_out else (UNKNOWN_SHAPES, UNKNOWN_COLORS)
    words = Words(rng)
    known = replace(obj, position=None)
    if rng.random() < 0.6:
        unknown = _pick(rng, shapes_)
        phrase = " ".join([*([words.size(obj.size)] if obj.size else []), *([words.color(obj.color)] if obj.color
                                                                             else []), unknown])
        known = replace(known, shape=None)
    else:
        unknown = _pick(rng, colors)
        phrase = " ".join([*([words.size(obj.size)] if obj.size else []), unknown, words.noun(obj.shape)])
        known = replace(known, color=None)
    objects = list(spec.objects)
    objects[index] = replace(known, position=obj.position)
    drawable = replace(spec, objects=tuple(objects))
    others = [_mention_text(Mention([i], replace(o, position=None)), spec, words)
              for i, o in enumerate(spec.objects) if i != index]
    where = f" {words.position(obj.position)}" if obj.position else ""
    text = _join([f"{_article(phrase)} {phrase}{where}", *others], words)
    if spec.background is not None:
        text += f" {words.background(spec.background)}"
    return Prompt(_noisy(text, rng, typos=False), drawable, "unknown"), unknown  # no typo in the unknown word
