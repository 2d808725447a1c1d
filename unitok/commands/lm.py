"""``unitok lm``: train/validate the unified LM (LightningCLI) and export it as a plain HF folder.

``unitok lm fit|validate ...`` hands every following argument to LightningCLI, so ``--config``
(several compose: later ones override), ``--print_config``, ``--ckpt_path`` and dotted overrides
work as Lightning documents them. ``unitok lm export CKPT OUT_DIR [--adapter]`` is ours (``unitok.lm.export``).
"""

from __future__ import annotations

import argparse
import time

ACTIONS = ("fit", "validate", "export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="fit/validate: LightningCLI (try `unitok lm fit --help`); "
                             "export CKPT OUT_DIR: write a Hugging Face folder")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the action")


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        return _export(args.rest)
    from unitok.evaluation.val_previews import ValidationPreviews
    from unitok.lm.training import run_lm_cli

    run_lm_cli([args.action, *args.rest], callbacks=[ValidationPreviews()])
    return 0


def _export(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="unitok lm export",
                                     description="Lightning checkpoint -> Hugging Face folder loadable "
                                                 "with AutoModelForCausalLM (no trust_remote_code)")
    parser.add_argument("checkpoint", help="a .ckpt written by `unitok lm fit`")
    parser.add_argument("out_dir", help="output folder (replaced atomically if it exists)")
    parser.add_argument("--adapter", action="store_true",
                        help="a LoRA run (model.lora): write its adapter in peft's format beside the new embedding "
                             "rows (a small folder that loads onto the base) instead of the merged model")
    args = parser.parse_args(rest)
    from unitok.lm.export import export_lm

    start = time.perf_counter()
    out = export_lm(args.checkpoint, args.out_dir, adapter=args.adapter)
    print(f"exported {args.checkpoint} to {out} in {time.perf_counter() - start:.1f} s")
    return 0
