"""LightningCLI entry point for LM training (``unitok lm fit|validate``)."""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from unitok.lm.data import CodeShardDataModule
from unitok.lm.module import UnifiedLMModule


class UnifiedLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # One place for the training shards: the from-scratch BPE learns the same captions.
        parser.link_arguments("data.train_shards", "model.tokenizer_captions")


def main(args: list[str] | None = None, run: bool = True) -> UnifiedLMCLI:
    """Parse ``args`` (``fit --config ...``; without the subcommand when ``run=False``) and run."""
    # `unitok lm` passes its own argument list on purpose; sys.argv still holds "unitok lm ...".
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return UnifiedLMCLI(
        UnifiedLMModule, CodeShardDataModule, args=args,
        save_config_kwargs={"overwrite": True}, run=run,
    )
