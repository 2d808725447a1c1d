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
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from unitok.errors import UserError
from unitok.precision import training_precision
from unitok.progress_bar import TimeBudgetProgressBar
from unitok.run_layout import CHECKPOINTS, LOGS


class UniTokCLI(LightningCLI):
    """LightningCLI whose trainer gets the fastest precision for its hardware when the config
    leaves ``trainer.precision`` out (``unitok.precision``), said in one log line, and that
    refuses to resume a run from a checkpoint that has used up its step or time budget."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision, reason = training_precision(config.trainer.accelerator)
            rank_zero_info(reason)
        place_outputs_under_root(config.trainer)
        add_time_budget_progress_bar(config.trainer)

    def before_fit(self) -> None:
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path is not None and Path(ckpt_path).is_file():  # not "last" / "hpc": Lightning resolves those
            check_budget_left(self.trainer, read_checkpoint(ckpt_path, written_by="fit"), ckpt_path)


def place_outputs_under_root(trainer: Namespace) -> None:
    """Put what a run writes under ``trainer.default_root_dir`` (the working directory when unset)
    wherever the config leaves the place open: a CSV logger in ``ROOT/logs`` when it names no
    logger (``logger: false`` keeps none), and ``ROOT/checkpoints`` for each ``ModelCheckpoint``
    without a ``dirpath``. Why: the configs then name their run folder once, so
    ``--trainer.default_root_dir runs/mine`` moves the whole run, and a resume finds its
    ``last.ckpt`` in one folder (Lightning's own default is a new ``version_N`` folder per run)."""
    root = Path(trainer.default_root_dir or os.getcwd())
    if trainer.logger is None or trainer.logger is True:
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                   init_args=Namespace(save_dir=str(root), name=LOGS))
    for callback in _callbacks(trainer):
        if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and callback.init_args.dirpath is None:
            callback.init_args.dirpath = str(root / CHECKPOINTS)


def add_time_budget_progress_bar(trainer: Namespace) -> None:
    """Our progress bar (an ETA within ``max_time``, ``unitok.progress_bar``) in place of
    Lightning's default one, unless the bar is off or the config names a bar of its own."""
    if trainer.enable_progress_bar is False:
        return
    callbacks = _callbacks(trainer)
    if any("ProgressBar" in str(getattr(callback, "class_path", type(callback).__name__)) for callback in callbacks):
        return
    trainer.callbacks = [*callbacks, Namespace(class_path=f"{TimeBudgetProgressBar.__module__}.TimeBudgetProgressBar",
                                               init_args=Namespace())]


def _callbacks(trainer: Namespace) -> list[Any]:
    """The config's ``trainer.callbacks`` as a list (it may be one callback, or none)."""
    callbacks = trainer.callbacks
    return [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]


def training_seconds(checkpoint: dict[str, Any]) -> float:
    """Training time a checkpoint has used of ``trainer.max_time``, as Lightning's ``Timer`` saved
    it (0 when the run had no time limit)."""
    return checkpoint.get("callbacks", {}).get(Timer.__qualname__, {}).get("time_elapsed", {}).get("train", 0.0)


def check_budget_left(trainer: Trainer, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise UserError when ``checkpoint`` has already used ``trainer``'s max_steps or max_time.

    Why: Lightning restores the step count and the elapsed time, finds the budget spent, and ends
    the run successfully after training nothing ("Time limit reached").
    """
    steps = checkpoint.get("global_step", 0)
    if trainer.max_steps != -1 and steps >= trainer.max_steps:
        raise UserError(f"{path} has already trained {steps} steps, trainer.max_steps is {trainer.max_steps}: "
                        f"resuming would train nothing; raise it, e.g. --trainer.max_steps {2 * steps}")
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    cap = timer.time_remaining() if timer is not None else None  # before fit nothing has elapsed: all of max_time
    if cap is None:
        return
    spent = training_seconds(checkpoint)
    if spent >= cap:
        raise UserError(f"{path} has already trained for {_duration(spent)}, all of trainer.max_time {_duration(cap)}: "
                        f"resuming would train nothing; raise it, e.g. --trainer.max_time {_duration(2 * cap)} "
                        "(the learning rate then anneals over the new cap)")


def _duration(seconds: float) -> str:
    """Seconds as Lightning's ``max_time`` string, DD:HH:MM:SS."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


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
        reason = str(error).splitlines()[0] if str(error) else "the file ends early"
        raise UserError(f"{path} is not a readable checkpoint ({reason}); "
                        f"pass a .ckpt file written by '{written_by}'") from None
