"""Does sampling in a lower precision change what a Shapes model does? fp32 against ``--dtype``.

    python scripts/check_precision.py [--model DIR] [--dtype bfloat16] [--num 100]

On held-out val scenes (``--seed 77`` by default: not the scenes ``unitok eval shapes`` reports
on), the same model in fp32 and in ``--dtype``:

- greedy drawings of the canonical captions: how many come out code for code the same, and how
  many are the exact scene in each precision;
- greedy captions of the scenes' own renderings: how many are the same text, how many exact;
- reranking: ``--candidates`` candidates per prompt drawn once (in fp32, seeded), scored by every
  judge in both precisions: how often the pick changes, and how often each pick is the scene.

Why: ``unitok eval shapes`` samples at temperature > 0, where any change in the logits changes
the samples, so two precisions differ there as two seeds do; these figures separate what the
precision changes from sampling noise (docs/results.md, "bf16 sampling").
"""

from __future__ import annotations

import argparse

import torch
from pick_judge import judge_scores

from generation.pipeline import UniTokPipeline
from generation.runtime import DTYPES
from unitok.data import shapes
from unitok.data.shapes_shards import scenes_for_split
from unitok.default_model import default_model_dir


def exact_share(pipe: UniTokPipeline, codes: torch.Tensor, scenes: list[shapes.Scene]) -> float:
    return sum(shapes.analyze(image) == scene for image, scene in zip(pipe.decode_codes(codes), scenes, strict=True)) \
        / len(scenes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a UniTok pipeline folder (default: the embedded default)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="the precision compared with fp32")
    parser.add_argument("--num", type=int, default=100, help="held-out val scenes (default 100)")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=77, help="picks the scenes (default 77: not the eval's)")
    args = parser.parse_args()

    folder = args.model or default_model_dir()
    pipes = {"float32": UniTokPipeline.from_pretrained(folder), args.dtype: UniTokPipeline.from_pretrained(folder)}
    pipes[args.dtype].lm.to(DTYPES[args.dtype])
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    reference = pipes["float32"]
    scenes = scenes_for_split("val", args.num, seed=args.seed)
    prompts = [shapes.canonical_caption(scene) for scene in scenes]
    print(f"{folder}: fp32 against {args.dtype}, {args.num} held-out val scenes (seed {args.seed}), canonical captions")

    drawn = {name: pipe(prompts, temperature=0, num_candidates=1, guidance_scale=1, rewrite_prompts=False,
                        output_type="latent").images for name, pipe in pipes.items()}
    same = (drawn["float32"] == drawn[args.dtype]).flatten(1).all(1).float().mean()
    print(f"greedy drawings: {same:.1%} code for code the same; exact scenes "
          + ", ".join(f"{name} {exact_share(reference, codes, scenes):.1%}" for name, codes in drawn.items()))

    images = [shapes.render(scene) for scene in scenes]
    captions = {name: pipe.caption(images) for name, pipe in pipes.items()}
    same = sum(a == b for a, b in zip(captions["float32"], captions[args.dtype], strict=True)) / args.num
    print(f"greedy captions: {same:.1%} the same text; exact "
          + ", ".join(f"{name} {sum(c == p for c, p in zip(texts, prompts, strict=True)) / args.num:.1%}"
                      for name, texts in captions.items()))

    k = args.candidates
    temperature = reference.config.default_temperature or 0.7
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(args.num * k)]
    codes = reference(prompts, num_images_per_prompt=k, temperature=temperature, num_candidates=1, guidance_scale=1,
                      rewrite_prompts=False, output_type="latent", generator=generators).images
    right = torch.tensor([shapes.analyze(image) == scenes[i // k]
                          for i, image in enumerate(reference.decode_codes(codes))]).view(args.num, k)
    text_ids = [reference.encode_prompt(prompt) for prompt in prompts for _ in range(k)]
    scores = {name: judge_scores(pipe, codes, text_ids, k) for name, pipe in pipes.items()}
    print(f"reranking {k} candidates drawn in fp32 at temperature {temperature} "
          f"({right.float().mean():.1%} of them right):")
    rows = torch.arange(args.num)
    for judge in scores["float32"]:
        if judge == "first candidate":
            continue
        picks = {name: judged[judge].view(args.num, k).argmax(1) for name, judged in scores.items()}
        changed = (picks["float32"] != picks[args.dtype]).float().mean()
        print(f"  {judge:<30} pick changes for {changed:.1%} of prompts; picks right "
              + ", ".join(f"{name} {right[rows, pick].float().mean():.1%}" for name, pick in picks.items()))


if __name__ == "__main__":
    main()
