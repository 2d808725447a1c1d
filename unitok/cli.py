"""The ``unitok`` console command.

Every subcommand is the module ``unitok.commands.<name>``, listed here by name only and imported
when used, so ``unitok --help`` starts in well under a second without importing torch,
transformers or diffusers. A command module provides ``add_arguments(parser)`` and
``run(args) -> int`` and imports heavy libraries inside ``run``, not at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from unitok import DISTRIBUTION
from unitok.errors import UserError


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


COMMANDS: dict[str, Command] = {name: Command(f"unitok.commands.{name}", summary) for name, summary in (
    ("data", "write training shards (Shapes scenes or your own image folder)"),
    ("tokenizer", "train, validate or export the image tokenizer (LightningCLI); statistics of its codes"),
    ("tokenize", "pre-extract image codes from image shards into code shards"),
    ("lm", "train or export the unified language model (LightningCLI)"),
    ("assemble", "save an exported LM and an image tokenizer as one pipeline folder"),
    ("train", "the whole recipe on your images: shards, tokenizer, codes, LM, pipeline (resumable)"),
    ("generate", "text-to-image: draw images for prompts"),
    ("caption", "image captioning: describe images"),
    ("ask", "visual question answering: answer a question about an image"),
    ("edit", "image editing: change an image as an instruction says"),
    ("serve", "serve captioning and text-to-image over HTTP"),
    ("eval", "evaluate a model: Shapes scene accuracy, tokenizer and caption metrics"),
)}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitok",
        description="UniTok: one language model that reads and draws images through shared discrete tokens.",
    )
    parser.add_argument("--version", action="version", version=f"unitok {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.summary)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name].module)
    parser = argparse.ArgumentParser(prog=f"unitok {name}", description=COMMANDS[name].summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as error:
        print(f"unitok {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
