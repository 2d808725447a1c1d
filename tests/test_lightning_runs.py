"""Training runs launched through UniTokCLI: reruns and resumes keep one last.ckpt, and a resume
whose step or time budget is already spent is refused with a message instead of training nothing."""

import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from unitok.errors import UserError
from unitok.lightning_runs import launch_cli, read_checkpoint

CONFIGS = sorted(p for p in Path("configs").glob("*/*.yaml") if p.parent.name != "recipes")  # training configs


class Tiny(L.LightningModule):
    """One weight; each step sleeps ``step_seconds``, so a time cap ends a run after a few steps."""

    def __init__(self, step_seconds: float = 0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.step_seconds = step_seconds

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_seconds)
        return (self.weight - batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(10_000, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def checkpoint_settings(config: Path) -> dict:
    """The init_args of the ModelCheckpoint a shipped config trains with."""
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    return next(c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint"))


def fit(tmp_path, *args: str, checkpointing: dict | None = None) -> None:
    """``fit`` a Tiny module through UniTokCLI, checkpoints in ``tmp_path / "ckpt"``."""
    settings = {**(checkpointing or {"save_last": True, "save_top_k": 0}), "dirpath": str(tmp_path / "ckpt")}
    trainer = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
               "default_root_dir": str(tmp_path / "run"),
               "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": settings}]}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"trainer": trainer}))
    launch_cli(Tiny, None, ["fit", "--config", str(config), *args])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_every_shipped_config_replaces_last_ckpt(config):
    assert checkpoint_settings(config)["enable_version_counter"] is False


def test_a_rerun_and_a_resume_keep_one_last_ckpt(tmp_path):
    settings = checkpoint_settings(Path("configs/lm/shapes-tiny.yaml"))
    fit(tmp_path, "--trainer.max_steps", "3", checkpointing=settings)
    fit(tmp_path, "--trainer.max_steps", "3", checkpointing=settings)  # started again from scratch
    last = tmp_path / "ckpt" / "last.ckpt"
    fit(tmp_path, "--trainer.max_steps", "5", "--ckpt_path", str(last), checkpointing=settings)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]  # no last-v1.ckpt beside it
    assert read_checkpoint(last, written_by="fit")["global_step"] == 5


def test_a_resume_whose_time_cap_is_spent_is_refused_until_the_cap_is_raised(tmp_path):
    fit(tmp_path, "--trainer.max_time", "00:00:00:01", "--model.step_seconds", "0.05")
    last = tmp_path / "ckpt" / "last.ckpt"
    steps = read_checkpoint(last, written_by="fit")["global_step"]
    assert 0 < steps < 10_000  # stopped by the time cap
    with pytest.raises(UserError, match=r"already trained for 00:00:00:0\d, all of trainer.max_time 00:00:00:01: "
                                        r"resuming would train nothing; raise it, e.g. --trainer.max_time 00:00:00:02"):
        fit(tmp_path, "--trainer.max_time", "00:00:00:01", "--model.step_seconds", "0.05", "--ckpt_path", str(last))
    fit(tmp_path, "--trainer.max_time", "00:00:00:02", "--model.step_seconds", "0.05", "--ckpt_path", str(last))
    assert read_checkpoint(last, written_by="fit")["global_step"] > steps


def test_a_resume_whose_step_budget_is_spent_is_refused(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "3")
    with pytest.raises(UserError, match="already trained 3 steps, trainer.max_steps is 3: resuming would train "
                                        "nothing; raise it, e.g. --trainer.max_steps 6"):
        fit(tmp_path, "--trainer.max_steps", "3", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"))


def test_an_empty_checkpoint_file_is_a_one_line_error(tmp_path):
    (tmp_path / "cut.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt", written_by="unitok lm fit")


def test_default_root_dir_moves_a_shipped_config_s_logs_and_checkpoints(tmp_path, monkeypatch):
    """The shipped configs name their run folder once (trainer.default_root_dir): overriding it on
    the command line moves the logs and checkpoints with it, and nothing lands elsewhere."""
    shipped = yaml.safe_load(Path("configs/lm/shapes-tiny.yaml").read_text())["trainer"]
    trainer = {key: shipped[key] for key in ("default_root_dir", "callbacks")}
    trainer["callbacks"] = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"trainer": {**trainer, "accelerator": "cpu", "enable_progress_bar": False,
                                                  "enable_model_summary": False, "log_every_n_steps": 1}}))
    monkeypatch.chdir(tmp_path)
    launch_cli(Tiny, None, ["fit", "--config", str(config), "--trainer.max_steps", "3",
                            "--trainer.default_root_dir", str(tmp_path / "mine")])
    assert read_checkpoint(tmp_path / "mine" / "checkpoints" / "last.ckpt", written_by="fit")["global_step"] == 3
    assert (tmp_path / "mine" / "logs" / "version_0" / "config.yaml").is_file()  # saved in the CSV logger's folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run.yaml"]  # not runs/shapes-tiny


def test_a_config_that_names_its_outputs_keeps_them(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "2")  # logger: false, ModelCheckpoint.dirpath set
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "logs").exists()
