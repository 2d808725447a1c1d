"""Captioning and text-to-image of any UniTok model, on image shards with reference captions.

Suites:
- ``captions``: caption each image and score the captions against the sample's references
  (BLEU-4, ROUGE-L, CIDEr-D: ``unitok.evaluation.caption_scores``). The references are every
  caption the sample has (``json["captions"]``, as ``unitok data folder`` stores COCO's five),
  else its ``txt``.
- ``cycle``: text-to-image by cycle consistency: draw each sample's ``txt`` caption, caption the
  drawing, and score that against the prompt with the same metrics. It needs no judge model, and
  a drawing scores well only if the model reads back what it was asked to draw; it rewards
  drawings the model itself can read, which a human may not (compare the grid).

Samples without a caption are skipped and counted, as are prompts too long for the model's
context (``cycle``). Every figure is on the first ``num`` captioned samples, in shard order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from unitok.data.shards import SkipCounter, has_caption, iterate_samples, read_shards
from unitok.errors import UserError
from unitok.evaluation.caption_scores import CaptionScores, score_captions
from unitok.evaluation.cider import caption_words
from unitok.evaluation.reports import write_files
from unitok.evaluation.shapes_eval import Example, example_grid

SUITES = ("captions", "cycle")
GRID_EXAMPLES = 12
CaptionFn = Callable[[list[Image.Image]], list[str]]
DrawFn = Callable[[list[str], int], list[Image.Image]]  # (prompts, index of the first) -> one image each
FitsFn = Callable[[str], bool]  # whether a prompt fits the model's context


@dataclass
class CaptionModel:
    """The calls the evaluation makes; ``draw`` only for the cycle suite."""

    caption: CaptionFn
    draw: DrawFn | None = None
    fits: FitsFn = lambda prompt: True


@dataclass(frozen=True)
class CaptionedSample:
    key: str
    image: Image.Image
    references: list[str]


def references_of(sample: dict[str, Any]) -> list[str]:
    """Every reference caption of a decoded sample: ``json["captions"]`` when it lists them, else ``txt``."""
    listed = sample["meta"].get("captions")
    if isinstance(listed, list) and all(isinstance(text, str) for text in listed):
        texts = [text.strip() for text in listed if text.strip()]
        if texts:
            return texts
    return [sample["caption"].strip()] if has_caption(sample) else []


def check_captioned(source: str | os.PathLike | list[str]) -> None:
    """Fail unless ``source`` has an image sample with a caption (searching until the first one)."""
    seen, images = 0, 0
    for sample in iterate_samples(source):
        seen += 1
        images += "image" in sample
        if "image" in sample and references_of(sample):
            return
    if not seen:
        raise UserError(f"no readable sample in {source}: the shards are empty, or every member was skipped as corrupt")
    if not images:
        raise UserError(f"{source} holds code shards; `unitok eval captions` reads image shards (`unitok data`)")
    raise UserError(f"none of the {images} images in {source} has a caption; `unitok eval captions` needs shards "
                    "with reference captions (`unitok data folder --captions FILE`)")


@dataclass
class _Counts:
    uncaptioned: int = 0
    too_long: int = 0  # prompts the model's context cannot hold (cycle suite)


def captioned_samples(source: str | os.PathLike | list[str], num: int, counts: _Counts,
                      skipped: SkipCounter) -> Iterator[CaptionedSample]:
    """The first ``num`` image samples with a caption, in shard order; the others are counted."""
    taken = 0
    for sample in read_shards(source, training=False, skip_counter=skipped):
        references = references_of(sample)
        if "image" not in sample or not references:
            counts.uncaptioned += "image" in sample
            continue
        yield CaptionedSample(sample["key"], Image.fromarray(sample["image"]), references)
        taken += 1
        if taken == num:
            return


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class CaptionEvaluation:
    scores: dict[str, CaptionScores]  # suite -> scores
    examples: dict[str, list[Example]]  # suite -> the first few, for the grids
    records: list[dict]  # one per sample: key, references, caption, prompt, read back
    skipped: dict[str, int]
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"settings": self.settings, **{suite: s.as_dict() for suite, s in self.scores.items()},
                "skipped": self.skipped}

    def summary(self) -> str:
        parts = [f"{suite}: BLEU-4 {s.bleu4:.3f}, ROUGE-L {s.rouge_l:.3f}, CIDEr-D {s.cider_d:.3f} on {s.n}"
                 for suite, s in self.scores.items()]
        skipped = ", ".join(f"{count} {why}" for why, count in self.skipped.items() if count)
        return "; ".join(parts) + (f" (skipped {skipped})" if skipped else "")

    def markdown(self) -> str:
        what = {"captions": "captioning: caption of each image vs its reference captions",
                "cycle": "text-to-image by cycle consistency: caption of the drawing vs the prompt"}
        lines = ["# Captioning and text-to-image evaluation", "",
                 f"Model `{self.settings.get('model', '')}` on `{self.settings.get('shards', '')}`.", "",
                 "| suite | n | BLEU-4 | ROUGE-L | CIDEr-D | exact |", "|---|---|---|---|---|---|"]
        lines += [f"| {what[suite]} | {s.n} | {s.bleu4:.3f} | {s.rouge_l:.3f} | {s.cider_d:.3f} | {100 * s.exact:.1f}% |"
                  for suite, s in self.scores.items()]
        lines += ["", "BLEU-4 and ROUGE-L in [0, 1], CIDEr-D in [0, 10] (papers print them ×100); exact: the words "
                  "equal a reference's. Words are lower-cased, punctuation dropped."]
        skipped = {why: count for why, count in self.skipped.items() if count}
        if skipped:
            lines += ["", "Skipped: " + ", ".join(f"{count} {why}" for why, count in skipped.items()) + "."]
        lines += ["", "`captions.png`: images with their caption (and a reference); `cycle.png`: each prompt's drawing "
                  "with what the model reads back from it (a green frame: the same words). `samples.jsonl`: every "
                  "sample's texts.", ""]
        return "\n".join(lines)


@dataclass
class _Tally:
    """What one suite scored: each caption with its references, and the first few as grid examples."""

    candidates: list[str] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    def add(self, candidate: str, references: list[str], image: Image.Image, shown: str) -> None:
        self.candidates.append(candidate)
        self.references.append(references)
        if len(self.examples) < GRID_EXAMPLES:  # a green frame: the words of a reference
            words = caption_words(candidate)
            self.examples.append(Example(None, shown, image, any(words == caption_words(r) for r in references)))


def evaluate_captions(model: CaptionModel, source: str | os.PathLike | list[str], *, num: int = 200,
                      batch_size: int = 32, suites: Sequence[str] = SUITES, progress: bool = True,
                      settings: dict | None = None) -> CaptionEvaluation:
    """Run ``suites`` on the first ``num`` captioned samples of ``source``."""
    unknown = set(suites) - set(SUITES)
    if unknown or not suites:
        raise ValueError(f"choose suites from {SUITES}, got {list(suites)}")
    if "cycle" in suites and model.draw is None:
        raise ValueError("the cycle suite needs a model that draws")
    check_captioned(source)
    counts, corrupt = _Counts(), SkipCounter("shard member")
    tallies = {suite: _Tally() for suite in suites}
    records = []
    with tqdm(total=num, desc="eval captions", unit="sample", disable=not progress) as bar:
        for batch in _batches(captioned_samples(source, num, counts, corrupt), batch_size):
            batch_records = [{"key": s.key, "references": s.references} for s in batch]
            if "captions" in tallies:
                _caption(model, batch, batch_records, tallies["captions"])
            if "cycle" in tallies:
                counts.too_long += _cycle(model, batch, batch_records, tallies["cycle"])
            records += batch_records
            bar.update(len(batch))
    if "cycle" in tallies and not tallies["cycle"].candidates:
        raise UserError(f"every prompt of {source} is too long for the model's context; nothing was drawn")
    return CaptionEvaluation(
        {suite: score_captions(t.candidates, t.references) for suite, t in tallies.items()},
        {suite: t.examples for suite, t in tallies.items()}, records,
        skipped={"without a caption": counts.uncaptioned, "corrupt": corrupt.count,
                 "prompts too long for the model's context": counts.too_long},
        settings={"num": num, "suites": list(suites), **(settings or {})})


def _caption(model: CaptionModel, batch: list[CaptionedSample], records: list[dict], tally: _Tally) -> None:
    for sample, caption, record in zip(batch, model.caption([s.image for s in batch]), records, strict=True):
        record["caption"] = caption
        tally.add(caption, sample.references, sample.image, f"caption: {caption} / reference: {sample.references[0]}")


def _cycle(model: CaptionModel, batch: list[CaptionedSample], records: list[dict], tally: _Tally) -> int:
    """Draw each sample's first reference, read the drawing back; returns how many prompts did not fit."""
    prompts = [(s.references[0], record) for s, record in zip(batch, records, strict=True) if model.fits(s.references[0])]
    if prompts:
        drawings = model.draw([prompt for prompt, _ in prompts], len(tally.candidates))  # drawing i: seed index i
        for (prompt, record), drawing, back in zip(prompts, drawings, model.caption(drawings), strict=True):
            record.update(prompt=prompt, read_back=back)
            tally.add(back, [prompt], drawing, f"prompt: {prompt} / read back: {back}")
    return len(batch) - len(prompts)


def write_report(evaluation: CaptionEvaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """report.md, report.json, samples.jsonl and a grid per suite in ``out_dir``, each written atomically."""
    files: dict[str, Any] = {"report.md": evaluation.markdown(), "report.json": evaluation.as_dict(),
                             "samples.jsonl": "".join(json.dumps(r) + "\n" for r in evaluation.records)}
    for suite, shown in evaluation.examples.items():
        if shown:
            files[f"{suite}.png"] = example_grid(shown, columns=3)
    return write_files(out_dir, files)
