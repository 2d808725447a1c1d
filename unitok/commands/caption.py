"""``unitok caption``: one caption per image, in the order given (greedy, so deterministic).

Plain output is one caption a line; ``--json`` prints one JSON object a line with ``image`` (the
path as given) and ``caption``. Every image is read before the model loads, so an unreadable file
fails fast and names itself. Images are read as training data is (``unitok.data.images``).
"""

from __future__ import annotations

import argparse
import json

from unitok.commands._files import read_image
from unitok.commands._options import (
    add_runtime_arguments,
    check_runtime_arguments,
    load_pipeline,
    show_progress,
)
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to describe")
    parser.add_argument("--json", action="store_true", help="print JSON lines {\"image\": ..., \"caption\": ...}")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                        help="longest caption, in tokens (default 64)")
    add_runtime_arguments(parser, default_batch_size=32)


def run(args: argparse.Namespace) -> int:
    check_runtime_arguments(args)
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    images = [read_image(path) for path in args.images]
    pipeline = load_pipeline(args)

    from tqdm.auto import tqdm

    with tqdm(total=len(images), unit="image", disable=not show_progress(args) or len(images) == 1) as bar:
        for start in range(0, len(images), args.batch_size):
            paths = args.images[start:start + args.batch_size]
            captions = pipeline.caption(images[start:start + args.batch_size], max_new_tokens=args.max_new_tokens,
                                        batch_size=args.batch_size)
            for path, caption in zip(paths, captions, strict=True):
                print(json.dumps({"image": path, "caption": caption}) if args.json else caption, flush=True)
            bar.update(len(paths))
    return 0

