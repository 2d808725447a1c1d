"""Lightning's training progress bar, with an ETA that a ``trainer.max_time`` cap can shorten.

Why: Lightning sizes the bar by the epoch (or ``max_steps``), so a run capped at 3 minutes whose
epoch would take 4 hours shows a 4-hour ETA and stops at 1 %. Our CPU recipes are capped by
time, so the bar's total is brought down to the steps the time left allows at the rate measured
so far in this run (never above Lightning's own total; an epoch of unknown length gets one): the
ETA tqdm prints is then the real one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer, TQDMProgressBar

MEASURED_STEPS = 5  # batches before the rate is trusted (the first ones carry start-up costs)


class TimeBudgetProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training total honours the time budget (see the module doc)."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._batches = 0  # seen in this run
        self._measuring_since: float | None = None  # the clock at batch MEASURED_STEPS

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._batches = 0
        self._measuring_since = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._batches += 1
        if self._batches == MEASURED_STEPS:
            self._measuring_since = time.monotonic()
        bar = self.train_progress_bar
        total = capped_total(trainer, bar.n, self._seconds_per_batch())
        if total is not None and (bar.total is None or not math.isfinite(bar.total) or total < bar.total):
            bar.total = total
            bar.refresh()

    def _seconds_per_batch(self) -> float | None:
        if self._measuring_since is None or self._batches <= MEASURED_STEPS:
            return None
        return (time.monotonic() - self._measuring_since) / (self._batches - MEASURED_STEPS)


def capped_total(trainer: L.Trainer, done: int, seconds_per_batch: float | None) -> int | None:
    """The batches this epoch can still reach: ``done`` plus what the time left allows at
    ``seconds_per_batch``; None without a time cap or a rate yet."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    left = None if timer is None else timer.time_remaining("train")
    if left is None or seconds_per_batch is None or seconds_per_batch <= 0:
        return None
    return done + max(0, round(left / seconds_per_batch))
