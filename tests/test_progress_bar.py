"""The training progress bar's total (hence tqdm's ETA) honours trainer.max_time."""

import lightning as L
import torch
import yaml
from test_lightning_runs import Tiny

from unitok.lightning_runs import launch_cli
from unitok.progress_bar import TimeBudgetProgressBar


class RecordTotals(L.Callback):
    def __init__(self):
        self.totals: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = next(c for c in trainer.callbacks if isinstance(c, TimeBudgetProgressBar))
        self.totals.append(bar.train_progress_bar.total)


def fit_recording_totals(module: L.LightningModule, tmp_path, **budget) -> tuple[int, list]:
    """Fit ``module`` with our bar under ``budget`` (max_time or max_steps): its steps, and the
    bar's total after each batch."""
    recorder = RecordTotals()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[TimeBudgetProgressBar(), recorder], default_root_dir=tmp_path, **budget)
    trainer.fit(module)
    return trainer.global_step, recorder.totals


def test_a_time_capped_run_shows_the_steps_its_time_allows(tmp_path):
    steps, totals = fit_recording_totals(Tiny(step_seconds=0.05), tmp_path, max_time={"seconds": 3})
    assert 20 <= steps <= 70  # 3 s of 0.05 s steps
    assert totals[0] == 10_000  # Lightning's epoch length until the rate is measured
    # Once measured, the total is the steps the cap allows: near the steps the run really made.
    assert all(abs(total - steps) <= 0.35 * steps for total in totals[10:])


def test_without_a_time_cap_the_total_is_lightnings(tmp_path):
    _, totals = fit_recording_totals(Tiny(), tmp_path, max_steps=12)
    assert set(totals) == {12}


def test_unitok_fit_uses_it_unless_the_bar_is_off_or_chosen(tmp_path):
    def trainer_callbacks(**trainer_settings) -> list[str]:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "logger": False, "max_steps": 1,
                                                      "default_root_dir": str(tmp_path / "run"),
                                                      "enable_checkpointing": False, **trainer_settings}}))
        cli = launch_cli(Tiny, None, ["fit", "--config", str(config)])
        return [type(callback).__name__ for callback in cli.trainer.callbacks]

    assert "TimeBudgetProgressBar" in trainer_callbacks()
    assert not any("ProgressBar" in name for name in trainer_callbacks(enable_progress_bar=False))
    chosen = trainer_callbacks(callbacks=[{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}])
    assert "RichProgressBar" in chosen and "TimeBudgetProgressBar" not in chosen


class Endless(Tiny):
    """An iterable of unknown length: Lightning's bar has no total at all."""

    def train_dataloader(self):
        class Ones(torch.utils.data.IterableDataset):
            def __iter__(self):
                while True:
                    yield torch.ones(1)

        return torch.utils.data.DataLoader(Ones(), batch_size=1)


def test_an_epoch_of_unknown_length_gets_the_total_its_time_allows(tmp_path):
    steps, totals = fit_recording_totals(Endless(step_seconds=0.05), tmp_path, max_time={"seconds": 2})
    assert totals[0] is None or totals[0] == float("inf")
    assert all(abs(total - steps) <= 0.35 * steps for total in totals[10:])
