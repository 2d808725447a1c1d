"""Lightning callbacks shared by the tokenizer and LM training runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from unitok.atomic import atomic_file


class SaveFinalCheckpoint(L.Callback):
    """Write ``last.ckpt`` when training ends normally, whatever stopped it.

    Why: ``ModelCheckpoint(save_last=True, every_n_train_steps=N)`` writes ``last.ckpt`` only at
    its N-step marks, so a run stopped by ``max_time`` (the CPU recipes are time-capped) or by
    ``max_steps`` between marks loses its final, annealed steps. A run that fails (a NaN loss, a
    crash) does not reach ``on_train_end`` and keeps its last good checkpoint. The file is written
    atomically, so ``last.ckpt`` is never half written.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.save_last or checkpoint.dirpath is None:
            return
        last = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        # save_checkpoint is collective: every rank calls it, only rank 0 writes the file.
        if trainer.is_global_zero:
            with atomic_file(last) as partial:
                trainer.save_checkpoint(partial)
        else:
            trainer.save_checkpoint(last)
        trainer.strategy.barrier("final checkpoint")
