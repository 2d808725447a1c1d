"""What ``unitok generate`` and ``unitok caption`` share: model/device flags and loading.

No torch import at module level (the CLI table imports command modules to build ``--help``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from generation.default_model import resolve_model_dir

if TYPE_CHECKING:
    from generation.pipeline import UniTokPipeline


def add_runtime_arguments(parser: argparse.ArgumentParser, default_batch_size: int) -> None:
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a UniTok pipeline folder (default: the embedded default model)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1... (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=default_batch_size, metavar="B",
                        help=f"images per forward pass (default {default_batch_size})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice); 1 is often fastest for the "
                             "small default model on a busy machine")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are off anyway when stderr is not a terminal)")


def check_runtime_arguments(args: argparse.Namespace) -> None:
    from unitok.errors import UserError

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads must be >= 1, got {args.threads}")


def show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def load_pipeline(args: argparse.Namespace) -> UniTokPipeline:
    """Load ``--model`` (or the default) onto ``--device`` and say how it runs, on stderr."""
    folder = resolve_model_dir(args.model)  # fails fast, before importing torch
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from generation.pipeline import UniTokPipeline

    if args.threads:
        torch.set_num_threads(args.threads)

    # Loading bars and advice about optional packages are noise on a command line.
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    pipeline = UniTokPipeline.from_pretrained(folder)
    print(pipeline.configure_runtime(args.device), file=sys.stderr)
    pipeline.set_progress_bar_config(disable=not show_progress(args), leave=False)
    return pipeline
