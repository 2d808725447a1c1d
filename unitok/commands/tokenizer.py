"""``unitok tokenizer``: train, validate, export or measure the image tokenizer.

``fit`` and ``validate`` are LightningCLI (``--config configs/tokenizer/<name>.yaml``,
``--print_config``, ``--ckpt_path`` to resume, any ``--trainer.*``/``--model.*``/``--data.*``
override). Without ``--config`` the model and data defaults are the ``shapes64`` settings.
``export CKPT OUT_DIR`` turns a checkpoint into a folder that ``VQTokenizer.from_pretrained`` loads.
``stats --tokenizer DIR --shards PATTERN`` writes statistics of its codes (``tokenizer.stats``).
"""

from __future__ import annotations

import argparse
import sys

from unitok.commands._options import (
    add_threads_argument,
    add_tokenizer_argument,
    check_runtime_arguments,
    set_threads,
)
from unitok.default_model import resolve_tokenizer_dir
from unitok.errors import UserError

ACTIONS = ("fit", "validate", "export", "stats")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="fit / validate (LightningCLI), export CKPT OUT_DIR, or stats (visual-token statistics)")
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="LightningCLI arguments (try: fit --help), CKPT OUT_DIR for export, "
                             "or the stats flags (try: stats --help)")


def stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitok tokenizer stats",
        description="Statistics of a tokenizer's codes over image shards (encoded here) or code shards "
                    "(unitok tokenize): rank-frequency and Zipf exponent, entropy, neighbour conditional entropy "
                    "and mutual information, per-position usage, and an atlas of the most frequent codes. "
                    "Writes stats.json and PNG plots (docs/visual-tokens.md).",
    )
    add_tokenizer_argument(parser)
    parser.add_argument("--shards", required=True, metavar="PATTERN",
                        help="image shards or code shards: folder, glob or brace pattern")
    parser.add_argument("--out", default="token-stats", metavar="DIR",
                        help="folder for stats.json and the plots (default: token-stats)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="the first N samples only (default: all)")
    parser.add_argument("--view", default=None, metavar="NAME",
                        help="an extra image of each sample instead of the main one, e.g. clean (Shapes' canonical "
                             "render; its codes in code shards)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per encoder batch (default 64)")
    add_threads_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.action == "stats":
        return run_stats(stats_parser().parse_args(args.rest))
    if args.action == "export":
        if len(args.rest) != 2:
            raise UserError("usage: unitok tokenizer export CKPT OUT_DIR")
        from tokenizer.export import export_tokenizer

        print(f"exported tokenizer to {export_tokenizer(*args.rest)}")
        return 0
    from tokenizer.training import run_tokenizer_cli

    run_tokenizer_cli([args.action, *args.rest])
    return 0


def run_stats(args: argparse.Namespace) -> int:
    tokenizer_dir = resolve_tokenizer_dir(args.tokenizer)
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    check_runtime_arguments(args)
    from tokenizer.model import VQTokenizer
    from tokenizer.stats import collect_statistics, write_report
    from unitok.data.shards import shard_urls

    shard_urls(args.shards)  # a bad pattern fails here, before the model loads
    set_threads(args)
    model = VQTokenizer.from_pretrained(tokenizer_dir, low_cpu_mem_usage=False).eval()  # no accelerate needed
    if model.config.quantizer == "residual":
        raise UserError("statistics of residual codes ([h, w, Q] grids) are not supported; pass a vq, fsq or lfq tokenizer")
    statistics = collect_statistics(model, args.shards, view=args.view, batch_size=args.batch_size,
                                    max_images=args.max_images)
    if not statistics.images:
        raise UserError(f"no readable sample in {args.shards}: the shards are empty, or every member was skipped "
                        "as corrupt (see the warnings above)")
    about = {"tokenizer": str(tokenizer_dir), "shards": args.shards, "view": args.view or "main"}
    summary = write_report(statistics, model, args.out, about)
    print(_report(summary, args.out))
    if statistics.skipped:
        print(f"skipped {statistics.skipped} corrupt shard members", file=sys.stderr)
    return 0


def _report(summary: dict, out: str) -> str:
    unigram, zipf, neighbours = summary["unigram"], summary["zipf"], summary["neighbours"]
    exponent = "n/a" if zipf["exponent"] is None else f"{zipf['exponent']:.2f}"
    return "\n".join([
        f"{summary['images']} images from {summary['source']}, {summary['codes']} codes",
        f"entropy {unigram['entropy_bits']:.2f} bits of log2 K = {unigram['log2_codebook_size']:.2f}; "
        f"{unigram['codes_used']}/{summary['codebook_size']} codes used ({100 * unigram['usage']:.1f}%); "
        f"perplexity {unigram['perplexity']:.1f}",
        f"Zipf exponent {exponent} (ranks {zipf['ranks'][0]}-{zipf['ranks'][1]})",
        "H(code | left) {:.2f}, H(code | up) {:.2f}, H(code | left, up) {:.2f} bits; "
        "I(code; left) {:.2f}, I(code; up) {:.2f} bits".format(
            neighbours["left"]["conditional_entropy_bits"], neighbours["up"]["conditional_entropy_bits"],
            neighbours["left_and_up"]["conditional_entropy_bits"], neighbours["left"]["mutual_information_bits"],
            neighbours["up"]["mutual_information_bits"]),
        f"wrote {out}/stats.json and {', '.join(summary['plots'].values())}",
    ])
