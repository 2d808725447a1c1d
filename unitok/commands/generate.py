"""``unitok generate``: draw images for one prompt or for every line of a prompts file.

Image ``k`` of line ``L`` (0-based) is drawn with seed ``--seed + L * n + k``, whatever the batch
size. A single prompt goes to ``--out FILE`` (``FILE_k.png`` per image) or a folder, a prompts
file to ``DIR/{L:05d}.png`` or ``DIR/{L:05d}_{k}.png``; every path written is printed, or with
``--json`` one JSON line per file: its path, line, prompt, what it was drawn from, the model's
consistency score of its image(s) with the prompt, and the prompt's warnings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from unitok.commands._files import save_image
from unitok.commands._options import (
    add_runtime_arguments,
    add_sampling_arguments,
    check_runtime_arguments,
    load_pipeline,
    sampling_values,
    show_progress,
)
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="what to draw (or use --prompts-file)")
    parser.add_argument("--prompts-file", metavar="FILE", help="one prompt a line; images go to --out DIR")
    parser.add_argument("-n", "--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0); see the module docs")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="an image file (out.png) or a folder; default out.png, or out/ with --prompts-file")
    parser.add_argument("--grid", action="store_true", help="one grid image per prompt instead of one file per image")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line per file written instead of its path: path, line, prompt, "
                             "drawn_prompt, consistency (the model's own score of the image against the prompt, "
                             "0-1; a list for a grid) and warnings")
    add_sampling_arguments(parser)
    add_runtime_arguments(parser, default_batch_size=8)


@dataclass(frozen=True)
class Job:
    line: int  # 0-based line of the prompts file (0 for a single prompt)
    prompt: str


def run(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    if args.num_images <= 0:
        raise UserError(f"-n must be >= 1, got {args.num_images}")
    sampling = sampling_values(args)
    check_runtime_arguments(args)
    out = _output_target(args)
    pipeline = load_pipeline(args, progress=show_progress(args))
    for job in jobs:  # fail before drawing anything, naming the line
        try:
            pipeline.encode_prompt(job.prompt)
        except UserError as error:
            where = f"line {job.line + 1} of {args.prompts_file}: " if args.prompts_file else ""
            raise UserError(where + str(error)) from None

    import torch
    from tqdm.auto import tqdm

    n = args.num_images
    per_chunk = max(1, args.batch_size // n)  # whole prompts per pass, about batch_size images
    with tqdm(total=len(jobs), unit="prompt", disable=not show_progress(args) or len(jobs) == 1) as bar:
        for start in range(0, len(jobs), per_chunk):
            chunk = jobs[start:start + per_chunk]
            generators = [torch.Generator().manual_seed(args.seed + job.line * n + k) for job in chunk for k in range(n)]
            output = pipeline([job.prompt for job in chunk], num_images_per_prompt=n, generator=generators,
                              batch_size=args.batch_size, **sampling)
            images = output.images
            for i, job in enumerate(chunk):
                where = f"line {job.line + 1}: " if args.prompts_file else ""
                if output.drawn_prompts[i] != job.prompt:
                    print(f"{where}drawn as {output.drawn_prompts[i]!r}", file=sys.stderr, flush=True)
                for warning in output.warnings[i] if output.warnings else ():
                    print(f"{where}warning: {warning}", file=sys.stderr, flush=True)
                paths = _write(images[i * n:(i + 1) * n], job, out, args.grid)
                scores = output.consistency[i * n:(i + 1) * n]
                for k, path in enumerate(paths):
                    if not args.json:
                        print(path, flush=True)
                        continue
                    print(json.dumps({"path": str(path), "line": job.line, "prompt": job.prompt,
                                      "drawn_prompt": output.drawn_prompts[i],
                                      "consistency": [round(s, 4) for s in scores] if len(paths) < n
                                      else round(scores[k], 4),
                                      "warnings": output.warnings[i]}), flush=True)
            bar.update(len(chunk))
    return 0


def _jobs(args: argparse.Namespace) -> list[Job]:
    if (args.prompt is None) == (args.prompts_file is None):
        raise UserError("give a PROMPT or --prompts-file FILE (exactly one of them)")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("the prompt is empty")
        return [Job(0, args.prompt)]
    try:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the prompts file {args.prompts_file}: {error}") from None
    jobs = [Job(line, text.strip()) for line, text in enumerate(lines) if text.strip()]
    if not jobs:
        raise UserError(f"the prompts file {args.prompts_file} has no prompts")
    return jobs


@dataclass(frozen=True)
class Target:
    path: Path
    is_file: bool
    image_format: str


def _output_target(args: argparse.Namespace) -> Target:
    """Decide file or folder output up front, so a bad --out fails before any drawing."""
    from PIL import Image

    out = Path(args.out if args.out is not None else ("out" if args.prompts_file else "out.png"))
    formats = Image.registered_extensions()
    if out.suffix:
        if out.suffix.lower() not in formats:
            raise UserError(f"--out {out}: unknown image extension {out.suffix!r} (use .png, .jpg, ...)")
        if args.prompts_file:
            raise UserError("with --prompts-file, --out must be a folder (files are named after their lines)")
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; drop the extension to write into it")
        return Target(out, True, formats[out.suffix.lower()])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    return Target(out, False, "PNG")


def _write(images: list, job: Job, out: Target, grid: bool) -> list[Path]:
    """Save one prompt's images; returns the paths written."""
    if grid and len(images) > 1:
        from diffusers.utils import make_image_grid

        rows = max(r for r in range(1, math.isqrt(len(images)) + 1) if len(images) % r == 0)
        images = [make_image_grid(images, rows=rows, cols=len(images) // rows)]
    if out.is_file:
        stem, suffix = out.path.with_suffix(""), out.path.suffix
        paths = [out.path] if len(images) == 1 else [Path(f"{stem}_{k}{suffix}") for k in range(len(images))]
    else:
        name = f"{job.line:05d}"
        paths = ([out.path / f"{name}.png"] if len(images) == 1
                 else [out.path / f"{name}_{k}.png" for k in range(len(images))])
    for image, path in zip(images, paths, strict=True):
        save_image(image, path, out.image_format)
    return paths

