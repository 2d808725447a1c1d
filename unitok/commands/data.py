"""``unitok data``: write webdataset shards for tokenizer and LM training."""

from __future__ import annotations

import argparse
import time

from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    shapes = sub.add_parser("shapes", help="render synthetic Shapes scenes with captions")
    shapes.add_argument("--out", required=True, help="output folder for the .tar shards")
    shapes.add_argument("--num", type=int, required=True, help="number of scenes")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    shapes.add_argument("--seed", type=int, default=0, help="seed; the same seed writes the same shards")
    shapes.add_argument("--split", choices=("train", "val"), default="train",
                        help="train and val scenes are disjoint by construction")
    shapes.add_argument("--shard-size", type=int, default=5000, help="samples per shard")

    folder = sub.add_parser("folder", help="turn your own images (and captions) into shards")
    folder.add_argument("--images", required=True, help="folder searched recursively for jpg/png/webp")
    folder.add_argument("--captions", help="captions: JSONL {file, caption}, CSV (file,caption) or COCO captions JSON")
    folder.add_argument("--out", required=True, help="output folder for the .tar shards")
    folder.add_argument("--size", type=int, default=256, help="resize (shorter side) and center-crop to this side")
    folder.add_argument("--prefix", default="data", help="shard file prefix (default 'data')")
    folder.add_argument("--shard-size", type=int, default=1000, help="samples per shard")


def run(args: argparse.Namespace) -> int:
    if args.size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {args.size}")
    if args.shard_size < 1:
        raise UserError(f"--shard-size must be positive, got {args.shard_size}")
    start = time.perf_counter()
    if args.source == "shapes":
        from unitok.data.shapes_shards import write_shapes_shards

        if args.num < 1:
            raise UserError(f"--num must be positive, got {args.num}")
        paths = write_shapes_shards(args.out, args.num, args.size, args.seed, args.split, args.shard_size)
        elapsed = time.perf_counter() - start
        print(f"wrote {args.num} {args.split} scenes in {len(paths)} shards to {args.out} "
              f"in {elapsed:.1f} s ({args.num / elapsed:.0f} images/s)")
        return 0
    from unitok.data.folder_shards import write_folder_shards

    summary = write_folder_shards(args.images, args.out, captions=args.captions, size=args.size,
                                  prefix=args.prefix, shard_size=args.shard_size)
    print(summary.report())
    return 0 if summary.written else 1
