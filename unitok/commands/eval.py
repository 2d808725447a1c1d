"""``unitok eval``: how good a model is.

- ``tokenizer``: an image tokenizer's reconstructions (PSNR, SSIM) and codebook use on image
  shards (``unitok.evaluation.tokenizer_eval``);
- ``captions``: captioning, and text-to-image by cycle consistency, against the reference
  captions of image shards (BLEU-4, ROUGE-L, CIDEr-D: ``unitok.evaluation.caption_eval``);
- ``shapes``: accuracy on held-out Shapes scenes, held-in and held-out phrasings and renderings
  side by side (``unitok.evaluation.shapes_eval``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unitok.commands._options import (
    add_model_arguments,
    add_runtime_arguments,
    add_sampling_arguments,
    add_threads_argument,
    add_tokenizer_argument,
    check_runtime_arguments,
    load_pipeline,
    sampling_values,
    set_threads,
    show_progress,
)
from unitok.default_model import folder_kind, resolve_model_dir, resolve_tokenizer_dir
from unitok.errors import UserError

CAPTION_SUITES = ("captions", "cycle")  # unitok.evaluation.caption_eval.SUITES, without importing torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    tokenizer = sub.add_parser("tokenizer", help="an image tokenizer: PSNR, SSIM, codebook usage, reconstructions")
    add_tokenizer_argument(tokenizer)
    tokenizer.add_argument("--shards", required=True, metavar="PATTERN",
                           help="held-out image shards: folder, glob or brace pattern")
    tokenizer.add_argument("--num", type=int, default=None, metavar="N", help="the first N images (default: all)")
    tokenizer.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per forward pass")
    tokenizer.add_argument("--out", default="runs/eval-tokenizer", metavar="DIR",
                           help="folder for report.md, report.json, reconstructions.png")
    tokenizer.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    tokenizer.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(tokenizer)

    captions = sub.add_parser("captions", help="captioning, and text-to-image by cycle consistency, vs reference "
                                               "captions (BLEU-4, ROUGE-L, CIDEr-D)")
    captions.add_argument("--shards", required=True, metavar="PATTERN",
                          help="held-out image shards with captions: folder, glob or brace pattern")
    captions.add_argument("--num", type=int, default=200, metavar="N",
                          help="the first N captioned samples (default 200)")
    captions.add_argument("--suites", default=",".join(CAPTION_SUITES), metavar="LIST",
                          help="comma-separated subset of captions,cycle (default: both)")
    captions.add_argument("--seed", type=int, default=1234, help="the i-th drawing uses seed + i (default 1234)")
    captions.add_argument("--out", default="runs/eval-captions", metavar="DIR",
                          help="folder for report.md, report.json, samples.jsonl, captions.png, cycle.png")
    add_sampling_arguments(captions)
    add_runtime_arguments(captions, default_batch_size=32)

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
    if args.suite != "shapes" and args.num is not None and args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    return {"tokenizer": run_tokenizer, "captions": run_captions, "shapes": run_shapes}[args.suite](args)


def run_tokenizer(args: argparse.Namespace) -> int:
    check_runtime_arguments(args)
    folder = resolve_tokenizer_dir(args.tokenizer)
    from unitok.data.shards import shard_urls

    shard_urls(args.shards)  # a bad pattern fails here, before the model loads
    set_threads(args)
    from generation.runtime import resolve_device
    from tokenizer.model import VQTokenizer
    from unitok.evaluation.tokenizer_eval import evaluate_tokenizer, write_report

    device = resolve_device(args.device)
    model = VQTokenizer.from_pretrained(folder, low_cpu_mem_usage=False).eval().to(device)
    print(f"evaluating {folder} on {args.shards} ({device})", file=sys.stderr)
    evaluation = evaluate_tokenizer(model, args.shards, num=args.num, batch_size=args.batch_size,
                                    progress=show_progress(args),
                                    settings={"tokenizer": str(folder), "shards": args.shards, "device": str(device)})
    paths = write_report(evaluation, args.out)
    print(f"{evaluation.summary()}; wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run_captions(args: argparse.Namespace) -> int:
    suites = tuple(s.strip() for s in args.suites.split(",") if s.strip())
    if not suites or set(suites) - set(CAPTION_SUITES):
        raise UserError(f"--suites takes a comma-separated subset of {','.join(CAPTION_SUITES)}, got {args.suites!r}")
    chosen = sampling_values(args)
    check_runtime_arguments(args)
    if args.model is not None and Path(args.model).is_dir() and folder_kind(Path(args.model)) == "VQTokenizer":
        raise UserError(f"{args.model} is an image tokenizer; evaluate it with `unitok eval tokenizer --tokenizer "
                        f"{args.model}`, and pass a UniTok pipeline folder to --model")
    model_dir = resolve_model_dir(args.model)
    from unitok.data.shards import shard_urls
    from unitok.evaluation.caption_eval import check_captioned

    shard_urls(args.shards)
    check_captioned(args.shards)  # before the model loads
    pipe = load_pipeline(args)

    import torch

    from unitok.evaluation.caption_eval import CaptionModel, evaluate_captions, write_report

    def draw(prompts: list[str], first: int):
        generators = [torch.Generator().manual_seed(args.seed + first + i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, batch_size=args.batch_size, **chosen).images

    def fits(prompt: str) -> bool:
        try:
            pipe.encode_prompt(prompt)
        except UserError:
            return False
        return True

    drawing = pipe.sampling_settings(**chosen)  # what the model's defaults make of them, for the report
    model = CaptionModel(caption=lambda images: pipe.caption(images, batch_size=args.batch_size), draw=draw, fits=fits)
    start = time.perf_counter()
    evaluation = evaluate_captions(
        model, args.shards, num=args.num, batch_size=args.batch_size,
        suites=[s for s in CAPTION_SUITES if s in suites], progress=show_progress(args),
        settings={"model": str(model_dir), "shards": args.shards, "seed": args.seed,
                  "guidance": drawing.guidance_scale, "temperature": drawing.options.temperature,
                  "top_k": drawing.options.top_k, "top_p": drawing.options.top_p,
                  "candidates": drawing.num_candidates})
    paths = write_report(evaluation, args.out)
    print(f"{evaluation.summary()}; {time.perf_counter() - start:.0f} s; wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def run_shapes(args: argparse.Namespace) -> int:
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

    from generation.settings import CONSISTENCY_WARNING

    def generate(prompts: list[str], seed: int):
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        drawn = pipe(prompts, generator=generators, batch_size=args.batch_size, **chosen)
        return drawn.images, [score < CONSISTENCY_WARNING[drawing.judge] for score in drawn.consistency]

    def rewrite(prompts: list[str]):
        return [(r.restatement, r.unknown, r.accepted) for r in pipe.rewrites(prompts, batch_size=args.batch_size)]

    editing = pipe.edit_settings()  # likewise

    def edit(images: list, instructions: list[str], seed: int):
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(images))]
        return pipe.edit(images, instructions, generator=generators, batch_size=args.batch_size).images

    model = ShapesModel(
        generate_flagged=generate,
        caption=lambda images: pipe.caption(images, batch_size=args.batch_size),
        rewrite=rewrite if knows("rewrite") else None,
        answer=(lambda images, questions: pipe.answer(images, questions, batch_size=args.batch_size))
        if knows("answer") else None,
        edit=edit if knows("edit") else None,
    )
    check_reads_shapes(model.caption, pipe.image_tokenizer.image_size, str(model_dir))
    start = time.perf_counter()
    evaluation = evaluate_shapes(
        model, num_scenes=args.num, image_size=pipe.image_tokenizer.image_size, seed=args.seed,
        batch_size=args.batch_size, suites=suites,
        settings={"model": str(model_dir), "guidance": drawing.guidance_scale,
                  "temperature": drawing.options.temperature, "top_k": drawing.options.top_k,
                  "top_p": drawing.options.top_p, "candidates": drawing.num_candidates,
                  "consensus_weight": drawing.consensus_weight, "rewrite_prompts": drawing.rewrite_prompts,
                  "judge": drawing.judge,
                  "edit_temperature": editing.options.temperature, "edit_candidates": editing.num_candidates,
                  "edit_consensus_weight": editing.consensus_weight},
    )
    paths = write_report(evaluation, args.out)
    print(evaluation.markdown())
    print(f"evaluated in {time.perf_counter() - start:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
