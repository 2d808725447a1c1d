"""The shared learning-rate schedule anneals by the step budget or by the time budget."""

from __future__ import annotations

import itertools
import time

import lightning as L
import pytest
import torch

from unitok.schedules import warmup_cosine_factor

WARMUP, MIN_RATIO = 3, 0.1


class Recorder(L.LightningModule):
    """One weight, a sleepy training step (so time runs out first when asked) and the lr of each step."""

    def __init__(self, step_seconds: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.step_seconds = step_seconds
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        time.sleep(self.step_seconds)
        return (self.weight - batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(10_000, 1), batch_size=1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        factor = lambda step: warmup_cosine_factor(step, self.trainer, WARMUP, MIN_RATIO)  # noqa: E731
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
                                                         "interval": "step"}}


def _fit(tmp_path, step_seconds: float, **trainer_args) -> list[float]:
    module = Recorder(step_seconds)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **trainer_args)
    trainer.fit(module)
    return module.lrs


def test_step_budget_warms_up_then_decays_to_the_floor(tmp_path):
    lrs = _fit(tmp_path, 0.0, max_steps=40)
    assert lrs[:WARMUP] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[WARMUP:]))
    assert lrs[-1] == pytest.approx(MIN_RATIO, abs=0.01)


def test_time_budget_anneals_a_run_that_would_take_many_more_steps(tmp_path):
    lrs = _fit(tmp_path, 0.05, max_steps=100_000, max_time={"seconds": 3})
    assert 10 < len(lrs) < 100  # stopped by time, far from its step budget
    assert max(lrs) == pytest.approx(1.0, abs=0.05)
    assert lrs[-1] < MIN_RATIO + 0.1  # annealed by the deadline, not cut off at the peak
