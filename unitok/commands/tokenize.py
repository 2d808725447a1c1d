"""``unitok tokenize``: pre-extract image codes from image shards into code shards for LM training
(``tokenizer.code_shards``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unitok.commands._options import (
    add_threads_argument,
    add_tokenizer_argument,
    check_runtime_arguments,
    set_threads,
)
from unitok.default_model import resolve_tokenizer_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_tokenizer_argument(parser)
    parser.add_argument("--shards", required=True, help="image shards: folder, glob or brace pattern")
    parser.add_argument("--out", required=True, help="output folder for the code shards")
    parser.add_argument("--prefix", help="shard file prefix (default: the output folder's name)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per encoder batch")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per output shard")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    tokenizer_dir = resolve_tokenizer_dir(args.tokenizer)
    check_runtime_arguments(args)
    from tokenizer.code_shards import tokenize_shards
    from tokenizer.model import VQTokenizer
    from unitok.data.shards import shard_urls

    shard_urls(args.shards)  # a bad pattern fails here, before the model loads
    set_threads(args)
    model = VQTokenizer.from_pretrained(tokenizer_dir, low_cpu_mem_usage=False).eval()  # no accelerate needed
    start = time.perf_counter()
    summary = tokenize_shards(model, args.shards, args.out, prefix=args.prefix or Path(args.out).name,
                              name=tokenizer_dir.resolve().name, batch_size=args.batch_size,
                              shard_size=args.shard_size)
    elapsed = time.perf_counter() - start
    print(f"tokenized {summary['written']} images into {summary['shards']} shards in {args.out} "
          f"in {elapsed:.1f} s ({summary['written'] / max(elapsed, 1e-9):.0f} images/s); "
          f"skipped {summary['skipped']} corrupt members")
    if summary["renamed"]:
        print(f"keys an earlier sample had (shard sets numbered alike): {summary['renamed']}, "
              "renamed KEY-1, KEY-2, ...")
    if summary["uncaptioned"]:
        print(f"images without captions (left out of LM training): {summary['uncaptioned']}")
    return 0 if summary["written"] else 1
