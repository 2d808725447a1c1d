"""Shapes scene accuracy of a UniTok model: text-to-image, captioning and the round trip (and,
for a model that rewrites prompts, how often it restates a paraphrase as the right scene).

Everything is judged by reading scenes back, never by eye: generated images through
``shapes.analyze`` and generated captions through ``shapes.parse_caption``. Held-out scenes come
from the val split, which no training shard contains (``shapes_shards.scene_split``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from unitok.atomic import atomic_file
from unitok.data import shapes
from unitok.data.shapes_shards import scenes_for_split

ATTRIBUTES = ("background", "count", "position", "color", "shape", "size")
GenerateFn = Callable[[list[str], int], list[Image.Image]]  # (prompts, seed) -> one image each
CaptionFn = Callable[[list[Image.Image]], list[str]]
RewriteFn = Callable[[list[str]], list[str]]  # prompts -> the model's restatement of each


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

    def as_dict(self) -> dict:
        readable = max(self.total - self.unreadable, 1)
        return {
            "n": self.total,
            "exact": self.exact / max(self.total, 1),
            "unreadable": self.unreadable / max(self.total, 1),
            **{name: value / readable for name, value in self.attribute_hits.items()},
        }


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


@dataclass
class ShapesEvaluation:
    text_to_image_canonical: SceneScore
    text_to_image_paraphrased: SceneScore
    captioning: SceneScore
    round_trip: SceneScore
    examples: list[tuple[str, Image.Image, bool]]
    settings: dict
    rewriting: SceneScore | None = None  # the paraphrases' rewrites, parsed (models that rewrite)

    def as_dict(self) -> dict:
        scores = {
            "settings": self.settings,
            "text_to_image_canonical": self.text_to_image_canonical.as_dict(),
            "text_to_image_paraphrased": self.text_to_image_paraphrased.as_dict(),
            "captioning": self.captioning.as_dict(),
            "round_trip": self.round_trip.as_dict(),
        }
        if self.rewriting is not None:
            scores["rewriting_paraphrased"] = self.rewriting.as_dict()
        return scores

    def markdown(self) -> str:
        rows = [
            ("text-to-image, canonical captions", self.text_to_image_canonical),
            ("text-to-image, paraphrased captions", self.text_to_image_paraphrased),
            ("captioning (exact scene from the caption)", self.captioning),
            ("round trip caption → image → caption", self.round_trip),
        ]
        if self.rewriting is not None:
            rows.append(("rewriting, paraphrased captions (parsed)", self.rewriting))
        header = "| task | n | exact scene | unreadable | " + " | ".join(ATTRIBUTES) + " |"
        lines = ["# Shapes evaluation", "", f"Settings: `{json.dumps(self.settings)}`", "",
                 "Attribute columns: accuracy over the readable predictions.", "", header,
                 "|" + "---|" * (4 + len(ATTRIBUTES))]
        for name, score in rows:
            d = score.as_dict()
            lines.append(f"| {name} | {d['n']} | {100 * d['exact']:.1f}% | {100 * d['unreadable']:.1f}% | "
                         + " | ".join(f"{100 * d[a]:.1f}%" for a in ATTRIBUTES) + " |")
        return "\n".join(lines) + "\n"


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def evaluate_shapes(
    generate: GenerateFn,
    caption: CaptionFn,
    *,
    num_scenes: int = 300,
    image_size: int = 64,
    seed: int = 1234,
    batch_size: int = 32,
    settings: dict | None = None,
    progress: bool = True,
    rewrite: RewriteFn | None = None,
) -> ShapesEvaluation:
    """Run the three Shapes evaluations with the given generate/caption functions (and score
    ``rewrite`` on the paraphrases, when given)."""
    scenes = scenes_for_split("val", num_scenes, seed)
    rng = np.random.default_rng(seed)
    paraphrases = [shapes.paraphrase(s, rng) for s in scenes]
    canonical = [shapes.canonical_caption(s) for s in scenes]
    t2i_canonical, t2i_paraphrased, captioning, round_trip = SceneScore(), SceneScore(), SceneScore(), SceneScore()
    rewriting = SceneScore() if rewrite is not None else None
    examples: list[tuple[str, Image.Image, bool]] = []
    bar = tqdm(total=4 * num_scenes, desc="shapes eval", unit="scene", disable=not progress)
    for start, batch in _batches(list(range(num_scenes)), batch_size):
        truths = [scenes[i] for i in batch]
        images = generate([canonical[i] for i in batch], seed + start)
        for truth, image, i in zip(truths, images, batch, strict=True):
            ok = t2i_canonical.add(truth, shapes.analyze(image))
            if len(examples) < 32:
                examples.append((canonical[i], image, ok))
        # Round trip: the generated image is captioned and the caption parsed back.
        for truth, text in zip(truths, caption(images), strict=True):
            round_trip.add(truth, shapes.parse_caption(text))
        para_images = generate([paraphrases[i] for i in batch], seed + 100_000 + start)
        for truth, image in zip(truths, para_images, strict=True):
            t2i_paraphrased.add(truth, shapes.analyze(image))
        rendered = [shapes.render(t, image_size) for t in truths]
        for truth, text in zip(truths, caption(rendered), strict=True):
            captioning.add(truth, shapes.parse_caption(text))
        if rewriting is not None:
            for truth, text in zip(truths, rewrite([paraphrases[i] for i in batch]), strict=True):
                rewriting.add(truth, shapes.parse_caption(text))
        bar.update(4 * len(batch))
    bar.close()
    return ShapesEvaluation(t2i_canonical, t2i_paraphrased, captioning, round_trip, examples,
                            settings={"num_scenes": num_scenes, "seed": seed, **(settings or {})}, rewriting=rewriting)


def example_grid(examples: list[tuple[str, Image.Image, bool]], columns: int = 4, tile: int = 128) -> Image.Image:
    """Prompts beside their generated images; a green or red frame says whether it read back right."""
    text_width, pad = 3 * tile, 6
    rows = (len(examples) + columns - 1) // columns
    cell_w, cell_h = tile + text_width + 2 * pad, tile + 2 * pad
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    for index, (prompt, image, ok) in enumerate(examples):
        x, y = (index % columns) * cell_w + pad, (index // columns) * cell_h + pad
        draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=(30, 160, 60) if ok else (200, 30, 30), width=3)
        grid.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        words, line, lines = prompt.split(), "", []
        for word in words:  # wrap to the text column
            if draw.textlength(f"{line} {word}") > text_width - 2 * pad and line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        draw.multiline_text((x + tile + pad, y), "\n".join(lines), fill=(20, 20, 20))
    return grid


def write_report(evaluation: ShapesEvaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json and grid.png atomically into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "grid": out / "grid.png"}
    payloads = {
        "markdown": lambda p: p.write_text(evaluation.markdown()),
        "json": lambda p: p.write_text(json.dumps(evaluation.as_dict(), indent=2) + "\n"),
        "grid": lambda p: example_grid(evaluation.examples).save(p, format="PNG"),
    }
    for name, path in paths.items():
        with atomic_file(path) as tmp:
            payloads[name](tmp)
    return paths
