"""``unitok tokenizer``: train, validate or export the image tokenizer.

``fit`` and ``validate`` are LightningCLI (``--config configs/tokenizer/<name>.yaml``,
``--print_config``, ``--ckpt_path`` to resume, any ``--trainer.*``/``--model.*``/``--data.*``
override). Without ``--config`` the model and data defaults are the ``shapes64`` settings.
``export CKPT OUT_DIR`` turns a checkpoint into a folder that ``VQTokenizer.from_pretrained`` loads.
"""

from __future__ import annotations

import argparse

from unitok.errors import UserError

ACTIONS = ("fit", "validate", "export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="fit / validate (LightningCLI) or export CKPT OUT_DIR")
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="LightningCLI arguments (try: fit --help), or CKPT OUT_DIR for export")


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        if len(args.rest) != 2:
            raise UserError("usage: unitok tokenizer export CKPT OUT_DIR")
        from tokenizer.export import export_tokenizer

        print(f"exported tokenizer to {export_tokenizer(*args.rest)}")
        return 0
    from tokenizer.training import run_tokenizer_cli

    run_tokenizer_cli([args.action, *args.rest])
    return 0
