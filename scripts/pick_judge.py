"""Which judge picks the right drawing among a Shapes model's sampled candidates, and at what temperature.

    python scripts/pick_judge.py --model runs/default/pipeline [--temperatures 0.5 0.7 1.0] [--num 100]

Draws ``--candidates`` candidates per prompt for the canonical captions of held-out val scenes
(``--seed 77`` by default: other scenes than ``unitok eval shapes`` reports on, so the defaults are
not picked on the figures they are judged by) and says how often each way of picking one gives
the exact scene: the first candidate (no reranking), the model's verdict, the prompt's likelihood
as the candidate's caption (with consensus weights 0, 1, 4) and an oracle that knows the answer
(the ceiling of any judge); greedy decoding beside them. Why: a verdict is only as good as its
training, and a model's defaults must be picked for it (docs/results.md, "Which judge picks the
drawing").
"""

from __future__ import annotations

import argparse

import torch

from generation.pipeline import UniTokPipeline
from generation.rerank import (
    consensus_log_counts,
    prompt_log_likelihood,
    read_candidates,
    reads_as_its_prompt,
    verification_scores,
)
from unitok.data import shapes
from unitok.data.shapes_shards import scenes_for_split


def judge_scores(pipe: UniTokPipeline, codes: torch.Tensor, text_ids: list[list[int]],
                 candidates: int) -> dict[str, torch.Tensor]:
    """Each judge's score of every candidate (row ``i * K + j``)."""
    likelihood = prompt_log_likelihood(pipe.lm, pipe.vocabulary, codes, text_ids)
    readings = read_candidates(pipe.lm, pipe.vocabulary, codes, batch_size=64)
    consensus = consensus_log_counts(readings, candidates).masked_fill(
        reads_as_its_prompt(readings, text_ids, candidates), 0.0)
    scores = {"first candidate": torch.zeros(len(codes))}
    if pipe.vocabulary.has("verify"):
        scores["verdict"] = verification_scores(pipe.lm, pipe.vocabulary, codes, text_ids)
    for weight in (0, 1, 4):
        scores[f"caption, consensus weight {weight}"] = likelihood + weight * consensus
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a UniTok pipeline folder trained on Shapes")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--num", type=int, default=100, help="held-out val scenes (default 100)")
    parser.add_argument("--seed", type=int, default=77, help="picks the scenes (default 77: not the eval's)")
    args = parser.parse_args()

    pipe = UniTokPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    scenes = scenes_for_split("val", args.num, seed=args.seed)
    prompts = [shapes.canonical_caption(scene) for scene in scenes]
    greedy = pipe(prompts, temperature=0, num_candidates=1, guidance_scale=1, rewrite_prompts=False).images
    print(f"{args.model}: {args.num} held-out val scenes (seed {args.seed}), canonical captions, exact scenes")
    exact = [shapes.analyze(image) == scene for image, scene in zip(greedy, scenes, strict=True)]
    print(f"greedy: {sum(exact) / args.num:.1%}")
    k = args.candidates
    for temperature in args.temperatures:
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(args.num * k)]
        codes = pipe(prompts, num_images_per_prompt=k, temperature=temperature, num_candidates=1, guidance_scale=1,
                     rewrite_prompts=False, output_type="latent", generator=generators).images
        right = torch.tensor([shapes.analyze(image) == scenes[i // k]
                              for i, image in enumerate(pipe.decode_codes(codes))]).view(args.num, k)
        print(f"temperature {temperature}, {k} candidates: {right.float().mean():.1%} of candidates right, "
              f"oracle {right.any(1).float().mean():.1%}")
        text_ids = [pipe.encode_prompt(prompt) for prompt in prompts for _ in range(k)]
        for name, scores in judge_scores(pipe, codes, text_ids, k).items():
            picked = right[torch.arange(args.num), scores.view(args.num, k).argmax(1)]
            print(f"  {name:<30} {picked.float().mean():.1%}")


if __name__ == "__main__":
    main()
