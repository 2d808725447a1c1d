"""Launching a Lightning training run from our command line, and reading its checkpoints back.

The image tokenizer and the LM are trained the same way (``unitok tokenizer fit``, ``unitok lm
fit``: LightningCLI with a YAML config) and exported the same way (a checkpoint read safely,
then written as a ``save_pretrained`` folder); both go through these two functions.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from unitok.errors import UserError
from unitok.precision import training_precision


class UniTokCLI(LightningCLI):
    """LightningCLI whose trainer gets the fastest precision for its hardware when the config
    leaves ``trainer.precision`` out (``unitok.precision``), said in one log line."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision, reason = training_precision(config.trainer.accelerator)
            rank_zero_info(reason)


def launch_cli(module_class: type, datamodule_class: type, args: list[str], *,
               cli_class: type[UniTokCLI] = UniTokCLI, run: bool = True,
               trainer_defaults: dict[str, Any] | None = None) -> LightningCLI:
    """LightningCLI over ``args`` (``fit --config ...``; without the subcommand when ``run=False``).

    The saved ``config.yaml`` of a run is overwritten when the run is started again (a resume).
    """
    # We pass args on purpose (they come from our own parser), so LightningCLI's warning about
    # sys.argv also being set does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return cli_class(module_class, datamodule_class, args=args, run=run,
                     save_config_kwargs={"overwrite": True}, trainer_defaults=trainer_defaults or {})


def read_checkpoint(path: str | os.PathLike, *, written_by: str) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, loaded with ``weights_only=True`` (never arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} (not found); pass a .ckpt file written by '{written_by}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise UserError(f"{path} is not a readable checkpoint ({str(error).splitlines()[0]}); "
                        f"pass a .ckpt file written by '{written_by}'") from None
