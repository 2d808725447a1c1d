"""``unitok eval shapes``: scene accuracy of a model on held-out Shapes scenes."""

from __future__ import annotations

import argparse
import json
import math
import time

from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    shapes = sub.add_parser("shapes", help="text-to-image, captioning and round-trip scene accuracy on Shapes")
    shapes.add_argument("--model", help="pipeline folder (default: the embedded default model)")
    shapes.add_argument("--num", type=int, default=300, help="held-out scenes per task (default 300)")
    shapes.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's own)")
    shapes.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature for image codes (default: the model's own)")
    shapes.add_argument("--top-k", type=int, default=None, help="top-k for image codes; 0 = off (default: the model's own)")
    shapes.add_argument("--candidates", type=int, default=None,
                        help="candidates drawn per image, the likeliest kept (default: the model's own)")
    shapes.add_argument("--consensus-weight", type=float, default=None,
                        help="weight of the candidates' agreement in reranking; 0 = off (default: the model's own)")
    shapes.add_argument("--rewrite-prompts", action=argparse.BooleanOptionalAction, default=None,
                        help="draw from the model's restatement of each prompt (default: the model's own)")
    shapes.add_argument("--seed", type=int, default=1234, help="picks the held-out scenes and the sampling seeds")
    shapes.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    shapes.add_argument("--out", default="runs/eval-shapes", help="folder for report.md, report.json, grid.png")


def run(args: argparse.Namespace) -> int:
    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be positive")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UserError(f"--guidance must be a finite number, got {args.guidance}")
    from generation.default_model import resolve_model_dir

    model_dir = resolve_model_dir(args.model)

    import torch

    from generation.pipeline import UniTokPipeline
    from unitok.evaluation.shapes_eval import evaluate_shapes, write_report

    pipe = UniTokPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    chosen = dict(guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k,
                  num_candidates=args.candidates, consensus_weight=args.consensus_weight,
                  rewrite_prompts=args.rewrite_prompts)
    drawing = pipe.sampling_settings(**chosen)  # what the model's defaults make of them, for the report

    def generate(prompts: list[str], seed: int):
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, batch_size=args.batch_size, **chosen).images

    start = time.perf_counter()
    evaluation = evaluate_shapes(
        generate, lambda images: pipe.caption(images, batch_size=args.batch_size),
        num_scenes=args.num, image_size=pipe.image_tokenizer.image_size, seed=args.seed,
        batch_size=args.batch_size,
        rewrite=(lambda prompts: pipe.rewrite_prompt(prompts, batch_size=args.batch_size))
        if drawing.rewrite_prompts else None,
        settings={"model": str(model_dir), "guidance": drawing.guidance_scale,
                  "temperature": drawing.options.temperature, "top_k": drawing.options.top_k,
                  "top_p": drawing.options.top_p, "candidates": drawing.num_candidates,
                  "consensus_weight": drawing.consensus_weight, "rewrite_prompts": drawing.rewrite_prompts},
    )
    paths = write_report(evaluation, args.out)
    print(evaluation.markdown())
    print(f"evaluated in {time.perf_counter() - start:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    print(json.dumps(evaluation.as_dict()))
    return 0
