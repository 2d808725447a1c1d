"""``unitok eval shapes``: scene accuracy of a model on held-out Shapes scenes (``unitok.evaluation``)."""

from __future__ import annotations

import argparse
import json
import time

from unitok.commands._options import (
    add_model_arguments,
    add_sampling_arguments,
    check_runtime_arguments,
    load_pipeline,
    sampling_values,
)
from unitok.default_model import resolve_model_dir
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    shapes = sub.add_parser("shapes", help="text-to-image, captioning and round-trip scene accuracy on Shapes")
    shapes.add_argument("--num", type=int, default=300, help="held-out scenes per task (default 300)")
    shapes.add_argument("--seed", type=int, default=1234, help="picks the held-out scenes and the sampling seeds")
    shapes.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    shapes.add_argument("--out", default="runs/eval-shapes", help="folder for report.md, report.json, grid.png")
    add_sampling_arguments(shapes)
    add_model_arguments(shapes)


def run(args: argparse.Namespace) -> int:
    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be positive")
    chosen = sampling_values(args)
    check_runtime_arguments(args)
    model_dir = resolve_model_dir(args.model)
    pipe = load_pipeline(args)

    import torch

    from unitok.evaluation.shapes_eval import evaluate_shapes, write_report

    drawing = pipe.sampling_settings(**chosen)  # what the model's defaults make of them, for the report

    def generate(prompts: list[str], seed: int):
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, batch_size=args.batch_size, **chosen).images

    start = time.perf_counter()
    evaluation = evaluate_shapes(
        generate, lambda images: pipe.caption(images, batch_size=args.batch_size),
        num_scenes=args.num, image_size=pipe.image_tokenizer.image_size, seed=args.seed,
        batch_size=args.batch_size,
        rewrite=(lambda prompts: pipe.rewrite_prompts(prompts, batch_size=args.batch_size))
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
