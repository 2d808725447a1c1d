"""LightningCLI for LM training (``unitok lm fit|validate``): the module, its data, one link."""

from __future__ import annotations

from unitok.lightning_runs import UniTokCLI, launch_cli
from unitok.lm.data import CodeShardDataModule
from unitok.lm.module import UnifiedLMModule


class UnifiedLMCLI(UniTokCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # One place for the training shards: the from-scratch BPE learns the same captions.
        parser.link_arguments("data.train_shards", "model.tokenizer_captions")


def run_lm_cli(args: list[str], run: bool = True) -> UnifiedLMCLI:
    """Parse ``args`` (``fit --config ...``; without the subcommand when ``run=False``) and run."""
    return launch_cli(UnifiedLMModule, CodeShardDataModule, args, cli_class=UnifiedLMCLI, run=run)
