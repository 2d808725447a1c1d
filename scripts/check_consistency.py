"""How well a Shapes model's consistency score tells its right drawings from its wrong ones.

    python scripts/check_consistency.py [--model DIR] [--num 100] [--judge caption]

Draws the prompts of held-out val scenes (``--seed 77`` by default: not the scenes ``unitok eval
shapes`` reports on) with the model's own defaults, in three kinds of wording: canonical captions,
the training phrasing families, the held-out families. Each drawing is right when it reads back
as its scene (``shapes.analyze``). Prints, per kind and overall, the share of right drawings, the
AUC of the consistency score (the chance a right drawing scores above a wrong one), and for each
threshold the share of right drawings flagged (false warnings) and of wrong ones flagged (caught);
then, for prompts that ask for what the domain lacks (held-out words), how often a warning names
the unknown word, and the share flagged against the share of in-domain prompts flagged.
Why: ``generation.settings.CONSISTENCY_WARNING`` is picked from this, per judge, on scenes the
report does not use (docs/results.md, "A consistency score for every model").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from generation.pipeline import UniTokPipeline
from unitok.data import shapes, shapes_language
from unitok.data.shapes_shards import scenes_for_split
from unitok.default_model import default_model_dir

THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def auc(right: np.ndarray, scores: np.ndarray) -> float:
    """The chance that a right drawing scores above a wrong one (ties count half)."""
    good, bad = scores[right], scores[~right]
    if not len(good) or not len(bad):
        return float("nan")
    above = (good[:, None] > bad[None, :]).mean() + 0.5 * (good[:, None] == bad[None, :]).mean()
    return float(above)


def report(name: str, right: np.ndarray, scores: np.ndarray) -> None:
    flags = ", ".join(f"<{t}: {(scores[right] < t).mean():.0%} / {(scores[~right] < t).mean():.0%}"
                      for t in THRESHOLDS)
    print(f"{name:<22} n {len(right):>3}, right {right.mean():.0%}, AUC {auc(right, scores):.2f}; "
          f"flagged right / wrong at {flags}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a UniTok pipeline folder (default: the embedded default)")
    parser.add_argument("--num", type=int, default=100, help="held-out val scenes per kind of wording (default 100)")
    parser.add_argument("--judge", default=None, help="verdict or caption (default: the model's own)")
    parser.add_argument("--seed", type=int, default=77, help="picks the scenes (default 77: not the eval's)")
    args = parser.parse_args()

    pipe = UniTokPipeline.from_pretrained(args.model or default_model_dir())
    pipe.configure_runtime("cpu")
    pipe.set_progress_bar_config(disable=True)
    scenes = scenes_for_split("val", args.num, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    kinds = {
        "canonical": [shapes.canonical_caption(scene) for scene in scenes],
        "held-in families": [shapes_language.describe(scene, rng, family=list(shapes_language.TRAIN_FAMILIES)[
            i % len(shapes_language.TRAIN_FAMILIES)], detail="full").text for i, scene in enumerate(scenes)],
        "held-out families": [shapes_language.describe(scene, rng, family=list(shapes_language.HELD_OUT_FAMILIES)[
            i % len(shapes_language.HELD_OUT_FAMILIES)], detail="full").text for i, scene in enumerate(scenes)],
    }
    asked = [shapes_language.describe_unknown(scene, rng, held_out=True) for scene in scenes]
    unknown, words = [prompt.text for prompt, _ in asked], [word for _, word in asked]
    print(f"{args.model or default_model_dir()}: {args.num} held-out val scenes (seed {args.seed}) per kind, "
          f"judge {pipe.sampling_settings(judge=args.judge).judge}")
    everything = ([], [])
    for name, prompts in kinds.items():
        output = draw(pipe, prompts, args)
        right = np.array([shapes.analyze(image) == scene for image, scene in zip(output.images, scenes, strict=True)])
        scores = np.array(output.consistency)
        report(name, right, scores)
        everything[0].append(right), everything[1].append(scores)
    report("all in-domain", np.concatenate(everything[0]), np.concatenate(everything[1]))
    # A prompt for what the domain lacks (held-out words: "a purple cube"): no drawing of it is right.
    output = draw(pipe, unknown, args)
    scores, in_domain = np.array(output.consistency), np.concatenate(everything[1])
    named = np.mean([any("cannot draw" in w for w in warnings) for warnings in output.warnings])
    named_word = np.mean([any(repr(word) in w for w in warnings) for warnings, word in zip(output.warnings, words,
                                                                                          strict=True)])
    print(f"{'out-of-domain words':<22} n {len(unknown):>3}, the model says it cannot draw something for {named:.0%}, "
          f"a warning names the unknown word for {named_word:.0%}; "
          "flagged out-of-domain / in-domain at " + ", ".join(
              f"<{t}: {(scores < t).mean():.0%} / {(in_domain < t).mean():.0%}" for t in THRESHOLDS))


def draw(pipe: UniTokPipeline, prompts: list[str], args: argparse.Namespace):
    generators = [torch.Generator().manual_seed(args.seed * 1000 + i) for i in range(len(prompts))]
    return pipe(prompts, generator=generators, judge=args.judge)


if __name__ == "__main__":
    main()
