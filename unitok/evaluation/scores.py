"""How one evaluation row counts: exact scenes with per-attribute agreement (``SceneScore``), or
a plain share of hits (``Rate``), and when a rewrite of a prompt says more than the prompt did.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from unitok.data import shapes
from unitok.data.shapes_language import Relation, SceneSpec

ATTRIBUTES = ("background", "count", "position", "color", "shape", "size")


@dataclass
class SceneScore:
    """Exact-scene accuracy over a list of (truth, prediction), plus per-attribute accuracies.

    A prediction that is no valid scene (an image the analyzer cannot read, e.g. four blobs; a
    caption that does not parse) counts as wrong for the exact score and as ``unreadable``; the
    per-attribute accuracies are over the readable predictions only, so they say which attribute
    goes wrong rather than repeating the unreadable share in every column.
    """

    total: int = 0
    exact: int = 0
    unreadable: int = 0
    attribute_hits: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0.0))

    def add(self, truth: shapes.Scene, predicted: shapes.Scene | None) -> bool:
        self.total += 1
        if predicted is None:
            self.unreadable += 1
            return False
        for name, value in attribute_hits(truth, predicted).items():
            self.attribute_hits[name] += value
        correct = predicted == truth
        self.exact += correct
        return correct

    @property
    def rate(self) -> float:
        return self.exact / max(self.total, 1)

    def as_dict(self) -> dict:
        readable = max(self.total - self.unreadable, 1)
        return {
            "n": self.total,
            "exact": self.rate,
            "unreadable": self.unreadable / max(self.total, 1),
            **{name: value / readable for name, value in self.attribute_hits.items()},
        }


@dataclass
class Rate:
    """The share of cases that came out right (``hits`` of ``total``), and of unreadable ones."""

    total: int = 0
    hits: int = 0
    unreadable: int = 0

    def add(self, hit: bool, readable: bool = True) -> bool:
        self.total += 1
        self.hits += bool(hit)
        self.unreadable += not readable
        return bool(hit)

    @property
    def rate(self) -> float:
        return self.hits / max(self.total, 1)

    def as_dict(self) -> dict:
        return {"n": self.total, "exact": self.rate, "unreadable": self.unreadable / max(self.total, 1)}


def attribute_hits(truth: shapes.Scene, predicted: shapes.Scene) -> dict[str, float]:
    """Per-attribute agreement in [0, 1]; object attributes are compared cell by cell."""
    by_position = {o.position: o for o in predicted.objects}
    matched = [(o, by_position.get(o.position)) for o in truth.objects]

    def share(attribute: str) -> float:
        return sum(p is not None and getattr(p, attribute) == getattr(t, attribute) for t, p in matched) / len(matched)

    return {
        "background": float(truth.background == predicted.background),
        "count": float(len(truth.objects) == len(predicted.objects)),
        "position": float({o.position for o in truth.objects} == set(by_position)),
        "color": share("color"),
        "shape": share("shape"),
        "size": share("size"),
    }


def adds_to(rewrite: SceneSpec | None, prompt: SceneSpec) -> bool:
    """Whether a rewrite states something its prompt did not, or states it otherwise: another
    object count, a background, an attribute or a relation the prompt left open or gave another
    value. Leaving out what the prompt said is an omission, not this. An unreadable rewrite adds
    nothing one could draw, so it is not counted here either (it is a miss of the exact row)."""
    if rewrite is None:
        return False
    if len(rewrite.objects) != len(prompt.objects):
        return True
    if rewrite.background not in (None, prompt.background):
        return True
    said = {_oriented(r) for r in prompt.relations}
    for order in itertools.permutations(range(len(prompt.objects))):  # rewrite object j is prompt object order[j]
        if all(getattr(obj, name) == getattr(prompt.objects[i], name)
               for obj, i in zip(rewrite.objects, order, strict=True) for name in obj.stated) and \
                all(_oriented(Relation(r.kind, tuple(order[j] for j in r.objects))) in said for r in rewrite.relations):
            return False
    return True


def _oriented(relation: Relation) -> Relation:
    """One form per meaning: "below"/"right of" turned round, symmetric relations in index order."""
    flipped = {"below": "above", "right of": "left of"}
    if relation.kind in flipped:
        return Relation(flipped[relation.kind], relation.objects[::-1])
    if relation.kind in ("above", "left of"):
        return relation
    return Relation(relation.kind, tuple(sorted(relation.objects)))
