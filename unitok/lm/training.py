"""LightningCLI for LM training (``unitok lm fit|validate``): the module, its data, one link."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from unitok.lightning_runs import UniTokCLI, launch_cli
from unitok.lm.data import CodeShardDataModule
from unitok.lm.module import UnifiedLMModule


class UnifiedLMCLI(UniTokCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # One place for the training shards: the from-scratch BPE learns the same captions.
        parser.link_arguments("data.train_shards", "model.tokenizer_captions")


def run_lm_cli(args: list[str], run: bool = True, callbacks: Sequence[L.Callback] = ()) -> UnifiedLMCLI:
    """Parse ``args`` (``fit --config ...``; without the subcommand when ``run=False``) and run;
    ``callbacks`` join the config's (the validation previews that ``unitok lm`` adds, which live
    in a layer above this one)."""
    return launch_cli(UnifiedLMModule, CodeShardDataModule, args, cli_class=UnifiedLMCLI, run=run,
                      trainer_defaults={"callbacks": list(callbacks)} if callbacks else None)
