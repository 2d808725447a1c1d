"""Flags several commands share, each added and checked in one place, and pipeline loading.

No torch import at module level: ``unitok <command> --help`` imports the command module. Values
are checked before any model loads, so a bad flag fails in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from generation.settings import JUDGES
from unitok.default_model import EMBEDDED_TOKENIZERS, resolve_model_dir
from unitok.errors import UserError

if TYPE_CHECKING:
    from generation.pipeline import UniTokPipeline

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# Pipeline argument -> flag; each flag's value goes to the pipeline argument of the same meaning.
SAMPLING_FLAGS = {
    "guidance_scale": "--guidance",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "num_candidates": "--candidates",
    "consensus_weight": "--consensus-weight",
    "rewrite_prompts": "--rewrite-prompts",
    "judge": "--judge",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a UniTok pipeline folder (default: the embedded default model)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1... (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="the LM's precision (default auto: the fastest this hardware computes in, i.e. bf16 on "
                             "GPUs and on CPUs with bf16 units, fp16 on GPUs without bf16, else fp32)")
    add_threads_argument(parser)


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    """``--tokenizer``, resolved by ``unitok.default_model.resolve_tokenizer_dir`` in ``run``."""
    parser.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="an image tokenizer folder (unitok tokenizer export), or a shipped one by name: "
                             + ", ".join(EMBEDDED_TOKENIZERS))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice); 1 is often fastest for the "
                             "small default model on a busy machine")


def add_runtime_arguments(parser: argparse.ArgumentParser, default_batch_size: int) -> None:
    """``--model``, ``--device``, ``--threads``, ``--batch-size``, ``--no-progress``."""
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=default_batch_size, metavar="B",
                        help=f"images per forward pass (default {default_batch_size})")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are off anyway when stderr is not a terminal)")


def check_runtime_arguments(args: argparse.Namespace) -> None:
    if getattr(args, "batch_size", 1) <= 0:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads must be >= 1, got {args.threads}")


def add_sampling_arguments(parser: argparse.ArgumentParser, default: str = "the model's own") -> None:
    """The drawing flags; left out, each takes ``default`` (the model's saved default when drawing)."""
    parser.add_argument("--guidance", type=float, default=None, metavar="G",
                        help=f"classifier-free guidance scale; 1 = no guidance (default: {default})")
    parser.add_argument("--temperature", type=float, default=None,
                        help=f"sampling temperature; 0 = greedy (default: {default})")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help=f"sample among the K most likely codes; 0 = off (default: {default})")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help=f"nucleus sampling mass in (0, 1]; 1 = off (default: {default})")
    parser.add_argument("--candidates", type=int, default=None, metavar="K",
                        help="draw K candidates per image and keep the one the model judges best; needs "
                             f"temperature > 0 (default: {default})")
    parser.add_argument("--consensus-weight", type=float, default=None, metavar="W",
                        help="when reranking, add W x log(candidates the model reads as the same caption); "
                             f"0 = off (default: {default})")
    parser.add_argument("--rewrite-prompts", action=argparse.BooleanOptionalAction, default=None,
                        help="draw from the model's restatement of each prompt in its own captioning words "
                             f"(models trained with rewriting; default: {default})")
    parser.add_argument("--judge", choices=JUDGES, default=None,
                        help="how candidates are judged when reranking: the model's yes/no verdict on the prompt "
                             f"(models trained to verify) or the prompt's likelihood as their caption (default: {default})")


def sampling_values(args: argparse.Namespace) -> dict:
    """The sampling flags as pipeline arguments (None where not given), checked."""
    from generation.settings import check_sampling_values

    values = {name: getattr(args, flag.removeprefix("--").replace("-", "_")) for name, flag in SAMPLING_FLAGS.items()}
    check_sampling_values(SAMPLING_FLAGS, **values)
    return values


def show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def quiet_library_logging() -> None:
    """Loading bars and advice about optional packages are noise on a command line or in a server log."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def load_pipeline(args: argparse.Namespace, progress: bool = False) -> UniTokPipeline:
    """Load ``--model`` (or the default) onto ``--device``, say how it runs on stderr; the
    pipeline's own progress bars only with ``progress``."""
    folder = resolve_model_dir(args.model)  # fails fast, before importing torch
    set_threads(args)
    quiet_library_logging()
    from generation.pipeline import UniTokPipeline

    pipeline = UniTokPipeline.from_pretrained(folder)
    print(pipeline.configure_runtime(args.device, args.dtype), file=sys.stderr)
    pipeline.set_progress_bar_config(disable=not progress, leave=False)
    return pipeline
