"""The learning-rate schedule of every UniTok training run: linear warm-up, then cosine decay.

Why not transformers' ``get_cosine_with_min_lr_schedule_with_warmup``: it decays over a step count
fixed at the start, so a run capped by ``trainer.max_time`` (the CPU recipes are: a shared machine
may give fewer steps than planned) stops at a high learning rate. Here the decay follows whichever
budget is used up faster, steps or time, so the rate is annealed by the end either way.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Timer


def warmup_cosine_factor(step: int, trainer: L.Trainer, warmup_steps: int, min_lr_ratio: float) -> float:
    """``LambdaLR`` factor at optimizer step ``step``: ``(step + 1) / warmup_steps`` during warm-up,
    then cosine from 1 to ``min_lr_ratio`` at ``max_steps`` or at the end of ``max_time``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = max(_step_progress(step, trainer, warmup_steps), _time_progress(trainer))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _step_progress(step: int, trainer: L.Trainer, warmup_steps: int) -> float:
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total <= warmup_steps:
        return 0.0
    return (step - warmup_steps) / (total - warmup_steps)


def _time_progress(trainer: L.Trainer) -> float:
    """Fraction of ``trainer.max_time`` used (0 without a time limit); restored on resume."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None:
        return 0.0
    elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
    if remaining is None or elapsed + remaining <= 0:
        return 0.0
    return elapsed / (elapsed + remaining)
