"""``unitok eval shapes``: accuracy of a model on held-out Shapes scenes, held-in and held-out
phrasings and renderings side by side (``unitok.evaluation.shapes_eval``)."""

from __future__ import annotations

import argparse
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
    shapes = sub.add_parser("shapes", help="drawing, captioning, rewriting, question answering and editing on Shapes")
    shapes.add_argument("--num", type=int, default=300, help="held-out scenes per task (default 300)")
    shapes.add_argument("--seed", type=int, default=1234, help="picks the held-out scenes and the sampling seeds")
    shapes.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    shapes.add_argument("--out", default="runs/eval-shapes",
                        help="folder for report.md, report.json, grid.png (and edits.png)")
    shapes.add_argument("--suites", default=None, metavar="LIST",
                        help="comma-separated subset of drawing,drawing_held_out,captioning,rewriting,answering,editing "
                             "(default: every suite the model can do)")
    add_sampling_arguments(shapes)
    add_model_arguments(shapes)


def run(args: argparse.Namespace) -> int:
    from unitok.evaluation.shapes_eval import SUITES

    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be positive")
    suites = SUITES if args.suites is None else tuple(s.strip() for s in args.suites.split(",") if s.strip())
    if not suites or set(suites) - set(SUITES):
        raise UserError(f"--suites takes a comma-separated subset of {','.join(SUITES)}, got {args.suites!r}")
    chosen = sampling_values(args)
    check_runtime_arguments(args)
    model_dir = resolve_model_dir(args.model)
    pipe = load_pipeline(args)

    import torch

    from unitok.evaluation.shapes_eval import ShapesModel, check_reads_shapes, evaluate_shapes, write_report

    drawing = pipe.sampling_settings(**chosen)  # what the model's defaults make of them, for the report
    knows = pipe.vocabulary.has

    def generate(prompts: list[str], seed: int):
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, batch_size=args.batch_size, **chosen).images

    def rewrite(prompts: list[str]):
        return [(r.restatement, r.unknown, r.accepted) for r in pipe.rewrites(prompts, batch_size=args.batch_size)]

    model = ShapesModel(
        generate=generate,
        caption=lambda images: pipe.caption(images, batch_size=args.batch_size),
        rewrite=rewrite if knows("rewrite") else None,
        answer=(lambda images, questions: pipe.answer(images, questions, batch_size=args.batch_size))
        if knows("answer") else None,
        edit=(lambda images, instructions: pipe.edit(images, instructions, batch_size=args.batch_size).images)
        if knows("edit") else None,
    )
    check_reads_shapes(model.caption, pipe.image_tokenizer.image_size, str(model_dir))
    start = time.perf_counter()
    evaluation = evaluate_shapes(
        model, num_scenes=args.num, image_size=pipe.image_tokenizer.image_size, seed=args.seed,
        batch_size=args.batch_size, suites=suites,
        settings={"model": str(model_dir), "guidance": drawing.guidance_scale,
                  "temperature": drawing.options.temperature, "top_k": drawing.options.top_k,
                  "top_p": drawing.options.top_p, "candidates": drawing.num_candidates,
                  "consensus_weight": drawing.consensus_weight, "rewrite_prompts": drawing.rewrite_prompts},
    )
    paths = write_report(evaluation, args.out)
    print(evaluation.markdown())
    print(f"evaluated in {time.perf_counter() - start:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
