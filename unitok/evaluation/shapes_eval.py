"""Shapes accuracy of a UniTok model, every figure on held-out scenes and, side by side, on
phrasings and renderings it was trained on (held in) and ones it never saw (held out).

Suites (each needs only the model calls it uses):
- ``drawing``: text-to-image from canonical captions and from the training phrasing families
  (full scenes: exact scene); the round trip caption → image → caption.
- ``drawing_held_out``: text-to-image from the held-out phrasing families (full scenes: exact
  scene), from under-specified prompts (every stated attribute satisfied; and separately the
  stated number of objects) and from prompts with relations. (Two suites so that the two halves
  of the slowest work can run side by side.)
- ``captioning``: exact scene from the caption of every rendering variant (``EVAL_VARIANTS``).
- ``rewriting``: what the model restates a held-out-family prompt as (same meaning; saying more
  than the prompt: hallucination), and how often it flags what it cannot draw (out-of-domain
  prompts with held-out words) against how often it flags in-domain prompts.
- ``answering``: exact answers per question type, held-out and training question phrasings.
- ``editing``: exact target scene, and separately whether the untouched part stayed as it was.

Everything is judged by reading back, never by eye: images through ``shapes.analyze``, captions
through ``shapes_language.parse_caption``, rewrites through ``shapes_language.parse_prompt``. Held-out scenes
come from the val split, which no training shard contains (``shapes_shards.scene_split``).
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
from unitok.data import shapes, shapes_language, shapes_tasks
from unitok.data.images import load_image
from unitok.data.shapes_language import HELD_OUT_FAMILIES, TRAIN_FAMILIES
from unitok.data.shapes_renderings import EVAL_VARIANTS, HELD_OUT
from unitok.data.shapes_shards import scenes_for_split
from unitok.errors import UserError
from unitok.evaluation.scores import ATTRIBUTES, Rate, SceneScore, adds_to

SUITES = ("drawing", "drawing_held_out", "captioning", "rewriting", "answering", "editing")
PROBE_SCENES = 8  # held-out scenes a Shapes model must caption before it is evaluated
GenerateFn = Callable[[list[str], int], list[Image.Image]]  # (prompts, seed) -> one image each
# (prompts, seed) -> one image each, and whether the model's own consistency score flags it as a poor match
FlaggedGenerateFn = Callable[[list[str], int], tuple[list[Image.Image], list[bool]]]
CaptionFn = Callable[[list[Image.Image]], list[str]]
RewriteFn = Callable[[list[str]], list[tuple[str, str, bool]]]  # prompts -> (restatement, unknown words, drawn?)
AnswerFn = Callable[[list[Image.Image], list[str]], list[str]]
EditFn = Callable[[list[Image.Image], list[str], int], list[Image.Image]]  # (images, instructions, seed)


@dataclass
class ShapesModel:
    """The calls the evaluation makes; a suite whose call is None is not run."""

    generate: GenerateFn | None = None
    generate_flagged: FlaggedGenerateFn | None = None  # instead of ``generate``: its drawings' flags are scored too
    caption: CaptionFn | None = None
    rewrite: RewriteFn | None = None
    answer: AnswerFn | None = None
    edit: EditFn | None = None

    def runs(self, suite: str) -> bool:
        draws = self.generate or self.generate_flagged
        needs = {"drawing": (draws, self.caption), "drawing_held_out": (draws,),
                 "captioning": (self.caption,), "rewriting": (self.rewrite,),
                 "answering": (self.answer,), "editing": (self.edit,)}[suite]
        return all(call is not None for call in needs)


@dataclass
class Row:
    key: str  # stable id in report.json, e.g. "text_to_image/held_out_families"
    task: str
    what: str  # the prompts, renderings or questions, in words
    held: str  # "held in", "held out" or "" (where phrasing does not apply)
    score: SceneScore | Rate


@dataclass
class Example:
    before: Image.Image | None  # the image edited (None for text-to-image)
    text: str
    after: Image.Image
    ok: bool


@dataclass
class ShapesEvaluation:
    rows: list[Row]
    breakdown: dict[str, dict[str, dict]]  # e.g. {"answering by kind": {"count": {...}}}
    drawings: list[Example]
    edits: list[Example]
    settings: dict

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def as_dict(self) -> dict:
        return {"settings": self.settings, **{row.key: {"task": row.task, "what": row.what, "held": row.held,
                                                         **row.score.as_dict()} for row in self.rows},
                "breakdown": self.breakdown}

    def markdown(self) -> str:
        lines = ["# Shapes evaluation", "", f"Settings: `{json.dumps(self.settings)}`", "",
                 "Held-out scenes throughout; *held out* marks phrasings, renderings or question wordings no "
                 "training sample uses.", "",
                 "| task | prompts / images | phrasing or rendering | n | right | unreadable |", "|---|---|---|---|---|---|"]
        for row in self.rows:
            d = row.score.as_dict()
            lines.append(f"| {row.task} | {row.what} | {row.held} | {d['n']} | {100 * d['exact']:.1f}% | "
                         f"{100 * d['unreadable']:.1f}% |")
        scene_rows = [row for row in self.rows if isinstance(row.score, SceneScore)]
        if scene_rows:
            lines += ["", "Per attribute (exact-scene rows; over the readable predictions):", "",
                      "| task | prompts / images | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---|" * len(ATTRIBUTES)]
            for row in scene_rows:
                d = row.score.as_dict()
                lines.append(f"| {row.task} | {row.what} | " + " | ".join(f"{100 * d[a]:.1f}%" for a in ATTRIBUTES) + " |")
        for title, parts in self.breakdown.items():
            lines += ["", f"{title}:", "", "| | n | right |", "|---|---|---|"]
            lines += [f"| {name} | {d['n']} | {100 * d['exact']:.1f}% |" for name, d in parts.items()]
        return "\n".join(lines) + "\n"


def check_reads_shapes(caption: CaptionFn, image_size: int, name: str) -> None:
    """Refuse a model that writes no Shapes caption for any of ``PROBE_SCENES`` held-out scenes.

    Why by behaviour: nothing in a model folder says what data it learned (Shapes renders at any
    size), and a model trained on anything else (photos) would score 100 % unreadable on every
    suite, which looks like a result. A Shapes model learns the caption language early in training.
    """
    scenes = scenes_for_split("val", PROBE_SCENES, seed=0)
    captions = caption([shapes.render(scene, image_size) for scene in scenes])
    if not any(shapes_language.parse_caption(text) for text in captions):
        raise UserError(f"{name} is not a Shapes model: none of {PROBE_SCENES} Shapes scenes got a Shapes caption "
                        f"(it wrote {captions[0]!r}); `unitok eval shapes` scores models trained on "
                        "`unitok data shapes` shards")


def evaluate_shapes(
    model: ShapesModel,
    *,
    num_scenes: int = 300,
    image_size: int = 64,
    seed: int = 1234,
    batch_size: int = 32,
    settings: dict | None = None,
    progress: bool = True,
    suites: Sequence[str] = SUITES,
) -> ShapesEvaluation:
    """Run the chosen ``suites`` that ``model`` has the calls for, ``num_scenes`` held-out scenes each."""
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)}; choose from {SUITES}")
    run = _Run(model, num_scenes, image_size, seed, batch_size, progress)
    for suite in SUITES:
        if suite in suites and model.runs(suite):
            getattr(run, suite)()
    run.consistency_rows()
    run.bar.close()
    return ShapesEvaluation(run.rows, run.breakdown, run.drawings, run.edits,
                            settings={"num_scenes": num_scenes, "seed": seed, "suites": [s for s in SUITES if s in suites
                                                                                          and model.runs(s)],
                                      **(settings or {})})


def _rate(hits: Sequence[bool]) -> Rate:
    rate = Rate()
    for hit in hits:
        rate.add(hit)
    return rate


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def normal_answer(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


@dataclass
class _Run:
    model: ShapesModel
    num: int
    image_size: int
    seed: int
    batch_size: int
    progress: bool
    rows: list[Row] = field(default_factory=list)
    breakdown: dict[str, dict[str, dict]] = field(default_factory=dict)
    drawings: list[Example] = field(default_factory=list)
    edits: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The model's own flags on its in-domain drawings, split by whether the drawing was right.
        self.flagged_right, self.flagged_wrong = Rate(), Rate()
        self.last_flags: list[bool] | None = None  # of the last ``_draw``, where the model flags
        self.scenes = scenes_for_split("val", self.num, self.seed)
        # Relations need two objects: the first ``num`` such val scenes.
        pool = scenes_for_split("val", 4 * self.num, self.seed + 1)
        self.multi = [s for s in pool if len(s.objects) >= 2][: self.num]
        self.bar = tqdm(desc="shapes eval", unit="item", disable=not self.progress)

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def _prompts(self, stream: int, families: Sequence[str], detail: str,
                 scenes: Sequence[shapes.Scene] | None = None) -> list[shapes_language.Prompt]:
        rng = self._rng(stream)
        return [shapes_language.describe(scene, rng, family=families[i % len(families)], detail=detail)
                for i, scene in enumerate(scenes or self.scenes)]

    def _draw(self, prompts: list[str], stream: int) -> list[Image.Image]:
        images, flags = [], []
        for start, batch in _batches(prompts, self.batch_size):
            seed = self.seed + stream * 1_000_000 + start
            if self.model.generate_flagged is not None:
                drawn, flagged = self.model.generate_flagged(list(batch), seed)
                flags += flagged
            else:
                drawn = self.model.generate(list(batch), seed)
            images += drawn
            self.bar.update(len(batch))
        self.last_flags = flags if self.model.generate_flagged is not None else None
        return images

    def _judge_flags(self, right: Sequence[bool]) -> None:
        """Count the last drawing's flags against whether each of its images was ``right``."""
        for ok, flagged in zip(right, self.last_flags or (), strict=False):
            (self.flagged_right if ok else self.flagged_wrong).add(flagged)

    def consistency_rows(self) -> None:
        """How the model's own flags split its in-domain drawings, where it flags them."""
        if self.flagged_right.total or self.flagged_wrong.total:
            self.rows += [
                Row("consistency/right_flagged", "consistency flag", "in-domain drawings that are right, flagged "
                    "as a poor match (lower is better)", "held in + out", self.flagged_right),
                Row("consistency/wrong_flagged", "consistency flag", "in-domain drawings that are wrong, flagged "
                    "as a poor match", "held in + out", self.flagged_wrong),
            ]

    def _caption(self, images: list[Image.Image]) -> list[str]:
        captions = []
        for _, batch in _batches(images, self.batch_size):
            captions += self.model.caption(list(batch))
            self.bar.update(len(batch))
        return captions

    # -- suites ------------------------------------------------------------------------------

    def drawing(self) -> None:
        canonical = [shapes.canonical_caption(s) for s in self.scenes]
        images = self._draw(canonical, 0)
        self._exact_rows("text_to_image/canonical", "text-to-image", "canonical captions", "held in",
                         self.scenes, images)
        round_trip = SceneScore()
        for scene, text in zip(self.scenes, self._caption(images), strict=True):
            round_trip.add(scene, shapes_language.parse_caption(text))
        self.rows.append(Row("round_trip", "round trip", "caption → image → caption", "held in", round_trip))

        self._families("held_in_families", "held in", list(TRAIN_FAMILIES), 1)

    def drawing_held_out(self) -> None:
        self._families("held_out_families", "held out", list(HELD_OUT_FAMILIES), 2)
        partial = self._prompts(3, list(HELD_OUT_FAMILIES), "partial")
        images = self._draw([p.text for p in partial], 3)
        satisfied, counted, right = Rate(), Rate(), []
        for prompt, image in zip(partial, images, strict=True):
            seen = shapes.analyze(image)
            right.append(satisfied.add(prompt.spec.satisfied_by(seen), seen is not None))
            counted.add(seen is not None and len(seen.objects) == len(prompt.spec.objects), seen is not None)
        self._judge_flags(right)
        self.rows.append(Row("text_to_image/under_specified", "text-to-image",
                             "under-specified prompts: every stated attribute", "held out", satisfied))
        self.rows.append(Row("text_to_image/counts", "text-to-image", "under-specified prompts: the stated count",
                             "held out", counted))

        related = [p for p in self._prompts(4, list(HELD_OUT_FAMILIES), "relations", self.multi) if p.spec.relations]
        images = self._draw([p.text for p in related], 4)
        relations, right = Rate(), []
        for prompt, image in zip(related, images, strict=True):
            seen = shapes.analyze(image)
            right.append(relations.add(prompt.spec.satisfied_by(seen), seen is not None))
        self._judge_flags(right)
        self.rows.append(Row("text_to_image/relations", "text-to-image", "prompts with relations (above, in a row...)",
                             "held out", relations))
        if self.model.generate_flagged is not None:
            # Prompts for what the domain lacks (held-out words): is the drawing flagged?
            rng = self._rng(5)
            self._draw([shapes_language.describe_unknown(s, rng, held_out=True)[0].text for s in self.scenes], 5)
            self.rows.append(Row("consistency/out_of_domain_flagged", "out-of-domain flag", "prompts asking for "
                                 "shapes/colours the domain lacks (held-out words): drawing flagged as a poor match",
                                 "held out", _rate(self.last_flags)))

    def _families(self, key: str, held: str, families: list[str], stream: int) -> None:
        prompts = self._prompts(stream, families, "full")
        images = self._draw([p.text for p in prompts], stream)
        self._exact_rows(f"text_to_image/{key}", "text-to-image", f"full scenes, {len(families)} phrasing families",
                         held, self.scenes, images, prompts)
        by_family = self.breakdown.setdefault("Text-to-image by phrasing family (full scenes)", {})
        for family in families:
            family_score = SceneScore()
            for scene, prompt, image in zip(self.scenes, prompts, images, strict=True):
                if prompt.family == family:
                    family_score.add(scene, shapes.analyze(image))
            by_family[f"{family} ({held})"] = family_score.as_dict()

    def _exact_rows(self, key: str, task: str, what: str, held: str, scenes: Sequence[shapes.Scene],
                    images: list[Image.Image], prompts: list[shapes_language.Prompt] | None = None) -> None:
        score, right = SceneScore(), []
        for i, (scene, image) in enumerate(zip(scenes, images, strict=True)):
            ok = score.add(scene, shapes.analyze(image))
            right.append(ok)
            if held == "held out" and len(self.drawings) < 24:
                self.drawings.append(Example(None, prompts[i].text if prompts else "", image, ok))
        self._judge_flags(right)
        self.rows.append(Row(key, task, what, held, score))

    def captioning(self) -> None:
        rng = self._rng(10)
        for name, make in EVAL_VARIANTS.items():
            images = [load_image(make(scene, self.image_size, rng)).image for scene in self.scenes]
            score = SceneScore()
            for scene, text in zip(self.scenes, self._caption(images), strict=True):
                score.add(scene, shapes_language.parse_caption(text))
            key = "captioning/" + "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
            self.rows.append(Row(key, "captioning", name, "held out" if name in HELD_OUT else "held in", score))

    def rewriting(self) -> None:
        details = ("full", "partial", "relations")
        prompts = [p for i, detail in enumerate(details)
                   for p in self._prompts(20 + i, list(HELD_OUT_FAMILIES), detail)]
        rng = self._rng(23)
        prompts = [prompts[i] for i in rng.permutation(len(prompts))[: self.num]]
        rewrites = self._rewrite([p.text for p in prompts])
        meaning, hallucinated, accepted, flagged = Rate(), Rate(), Rate(), Rate()
        for prompt, (text, unknown, took) in zip(prompts, rewrites, strict=True):
            read = shapes_language.parse_prompt(text)
            meaning.add(prompt.spec.same_meaning(read), read is not None)
            hallucinated.add(took and adds_to(read, prompt.spec))  # what is drawn: accepted rewrites only
            accepted.add(took)
            flagged.add(bool(unknown))
        self.rows += [
            Row("rewriting/same_meaning", "rewriting", "in-domain prompts (full, partial, relations): the "
                "restatement means the prompt", "held out", meaning),
            Row("rewriting/accepted", "rewriting", "in-domain prompts: restatement confident enough to be drawn",
                "held out", accepted),
            Row("rewriting/hallucination", "rewriting", "in-domain prompts: a drawn restatement says more than the "
                "prompt (lower is better)", "held out", hallucinated),
            Row("rewriting/in_domain_flagged", "out-of-domain flag", "in-domain prompts flagged (lower is better)",
                "held out", flagged),
        ]
        rng = self._rng(24)
        ood = [shapes_language.describe_unknown(scene, rng, held_out=True)[0].text for scene in self.scenes]
        caught = Rate()
        for _, unknown, _ in self._rewrite(ood):
            caught.add(bool(unknown))
        self.rows.append(Row("rewriting/out_of_domain_flagged", "out-of-domain flag",
                             "prompts asking for shapes/colours the domain lacks (held-out words) flagged", "held out",
                             caught))

    def _rewrite(self, prompts: list[str]) -> list[tuple[str, str, bool]]:
        results = []
        for _, batch in _batches(prompts, self.batch_size):
            results += self.model.rewrite(list(batch))
            self.bar.update(len(batch))
        return results

    def answering(self) -> None:
        for held_out, held in ((True, "held out"), (False, "held in")):
            rng = self._rng(30 + held_out)
            kinds = shapes_tasks.QUESTION_KINDS if held_out else (None,)
            items = [(scene, shapes_tasks.ask(scene, rng, kind, held_out=held_out))
                     for scene in self.scenes for kind in kinds]
            answers = []
            for _, batch in _batches(items, self.batch_size):
                answers += self.model.answer([shapes.render(scene, self.image_size) for scene, _ in batch],
                                             [q.text for _, q in batch])
                self.bar.update(len(batch))
            overall, by_kind, by_family = Rate(), {}, {}
            for (_, question), answer in zip(items, answers, strict=True):
                hit = normal_answer(answer) == question.answer
                overall.add(hit)
                by_kind.setdefault(question.kind, Rate()).add(hit)
                by_family.setdefault(question.family, Rate()).add(hit)
            what = "every question type" if held_out else "one random type per scene"
            self.rows.append(Row(f"answering/{held.replace(' ', '_')}", "question answering", f"{what}: exact answer",
                                 f"{held} (question wording)", overall))
            if held_out:
                self.breakdown["Question answering by type (held-out wordings)"] = {
                    kind: by_kind[kind].as_dict() for kind in shapes_tasks.QUESTION_KINDS if kind in by_kind}
                self.breakdown["Question answering by wording family (held out)"] = {
                    family: by_family[family].as_dict() for family in shapes_tasks.HELD_OUT_QUESTION_FAMILIES
                    if family in by_family}

    def editing(self) -> None:
        for held_out, held in ((True, "held out"), (False, "held in")):
            rng = self._rng(40 + held_out)
            kinds = shapes_tasks.EDIT_KINDS
            edits = [shapes_tasks.instruct(scene, rng, kinds[i % len(kinds)], held_out=held_out)
                     for i, scene in enumerate(self.scenes)]
            exact, preserved, by_kind, by_family = SceneScore(), Rate(), {}, {}
            for start, batch in _batches(edits, self.batch_size):
                befores = [shapes.render(e.before, self.image_size) for e in batch]
                afters = self.model.edit(befores, [e.instruction for e in batch],
                                         self.seed + (3 + held_out) * 1_000_000 + start)
                for edit, before, after in zip(batch, befores, afters, strict=True):
                    seen = shapes.analyze(after)
                    ok = exact.add(edit.after, seen)
                    preserved.add(shapes_tasks.untouched_preserved(edit, seen), seen is not None)
                    by_kind.setdefault(edit.kind, Rate()).add(ok)
                    by_family.setdefault(edit.family, Rate()).add(ok)
                    if held_out and len(self.edits) < 12:
                        self.edits.append(Example(before, edit.instruction, after, ok))
                self.bar.update(len(batch))
            tag = f"{held} (instruction wording)"
            self.rows.append(Row(f"editing/{held.replace(' ', '_')}", "editing", "exact target scene", tag, exact))
            self.rows.append(Row(f"editing/{held.replace(' ', '_')}_preserved", "editing",
                                 "untouched objects and background kept", tag, preserved))
            if held_out:
                self.breakdown["Editing by kind (held-out wordings, exact target)"] = {
                    kind: by_kind[kind].as_dict() for kind in kinds if kind in by_kind}
                self.breakdown["Editing by wording family (held out, exact target)"] = {
                    family: by_family[family].as_dict() for family in shapes_tasks.HELD_OUT_INSTRUCTION_FAMILIES
                    if family in by_family}


# -- pictures ------------------------------------------------------------------------------------


def example_grid(examples: list[Example], columns: int = 4, tile: int = 128) -> Image.Image:
    """Each example's images (before and after for an edit) beside its text; a green or red frame
    says whether it read back right."""
    text_width, pad = 3 * tile, 6
    tiles = 2 if any(e.before is not None for e in examples) else 1
    rows = max(1, (len(examples) + columns - 1) // columns)
    cell_w, cell_h = tiles * (tile + pad) + text_width + pad, tile + 2 * pad
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    for index, example in enumerate(examples):
        x, y = (index % columns) * cell_w + pad, (index // columns) * cell_h + pad
        if example.before is not None:
            grid.paste(example.before.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
            x += tile + pad
        draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=(30, 160, 60) if example.ok else (200, 30, 30),
                       width=3)
        grid.paste(example.after.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        line, lines = "", []
        for word in example.text.split():  # wrap to the text column
            if draw.textlength(f"{line} {word}") > text_width - 2 * pad and line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        draw.multiline_text((x + tile + pad, y), "\n".join(lines), fill=(20, 20, 20))
    return grid


def write_report(evaluation: ShapesEvaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json and the example grids (grid.png: drawings from held-out
    phrasings; edits.png: before, instruction, after) atomically into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payloads: dict[str, tuple[Path, Callable[[Path], object]]] = {
        "markdown": (out / "report.md", lambda p: p.write_text(evaluation.markdown())),
        "json": (out / "report.json", lambda p: p.write_text(json.dumps(evaluation.as_dict(), indent=2) + "\n")),
    }
    if evaluation.drawings:
        payloads["grid"] = (out / "grid.png", lambda p: example_grid(evaluation.drawings).save(p, format="PNG"))
    if evaluation.edits:
        payloads["edits"] = (out / "edits.png", lambda p: example_grid(evaluation.edits, columns=3).save(p, format="PNG"))
    for path, write in payloads.values():
        with atomic_file(path) as tmp:
            write(tmp)
    return {name: path for name, (path, _) in payloads.items()}

