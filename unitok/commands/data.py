"""``unitok data``: write webdataset shards for tokenizer and LM training."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from unitok.errors import UserError

if TYPE_CHECKING:
    from unitok.data.folder_shards import FolderInput


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

    folder = sub.add_parser(
        "folder", help="turn your own images (and captions) into shards",
        description="Each --captions belongs to the --images or --val-images folder before it (with one "
                    "folder, anywhere). A folder's captions come from its --captions files, else the HF "
                    "metadata.jsonl/metadata.csv files inside it, else --class-template.")
    folder.add_argument("--images", action=_InOrder, dest="inputs", required=True, metavar="DIR",
                        help="folder searched recursively for jpg/png/webp; repeat for several folders")
    folder.add_argument("--captions", action=_InOrder, dest="inputs", metavar="FILE",
                        help="captions of the folder before it: JSONL {file, caption}, CSV (file,caption) or "
                             "COCO captions JSON; repeat for several files")
    folder.add_argument("--class-template", metavar="TEMPLATE",
                        help='caption each image from the folder it sits in, e.g. "a photo of a {}" '
                             "(folders without captions of their own)")
    folder.add_argument("--val-fraction", type=float, metavar="F",
                        help="hold out this fraction of the images (by a hash of each path) in OUT/val, "
                             "the rest in OUT/train")
    folder.add_argument("--val-images", action=_InOrder, dest="inputs", metavar="DIR",
                        help="a held-out folder: its images go to OUT/val, those of --images to OUT/train")
    folder.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")
    folder.add_argument("--out", required=True, help="output folder for the .tar shards")
    folder.add_argument("--size", type=int, default=256, help="resize (shorter side) and center-crop to this side")
    folder.add_argument("--prefix", default="data", help="shard file prefix (default 'data')")
    folder.add_argument("--shard-size", type=int, default=1000, help="samples per shard")


class _InOrder(argparse.Action):
    """Keeps --images, --val-images and --captions in command-line order, as (flag, value) pairs:
    which folder a --captions file belongs to is where it stands."""

    def __call__(self, parser, namespace, values, option_string=None):
        flags = getattr(namespace, self.dest) or []
        setattr(namespace, self.dest, [*flags, (self.option_strings[0], values)])


def _folder_inputs(flags: list[tuple[str, str]]) -> list[FolderInput]:
    """The folders in command-line order, each with the --captions after it (before the next
    folder). With a single folder, a --captions may also come before it."""
    from unitok.data.folder_shards import FolderInput

    inputs: list[FolderInput] = []
    leading: list[Path] = []
    for flag, value in flags:
        if flag != "--captions":
            inputs.append(FolderInput(Path(value), val=flag == "--val-images"))
        elif inputs:
            inputs[-1] = replace(inputs[-1], captions=(*inputs[-1].captions, Path(value)))
        else:
            leading.append(Path(value))
    if leading and len(inputs) > 1:
        raise UserError(f"--captions {leading[0]} comes before any folder; with several folders, put each "
                        "--captions after the --images or --val-images it captions")
    if leading:
        inputs[0] = replace(inputs[0], captions=(*leading, *inputs[0].captions))
    return inputs


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

    summary = write_folder_shards(_folder_inputs(args.inputs), args.out, class_template=args.class_template,
                                  val_fraction=args.val_fraction, seed=args.seed, size=args.size,
                                  prefix=args.prefix, shard_size=args.shard_size)
    print(summary.report())
    return 0
