"""Training the tokenizer with Lightning on shards made here: metrics and pictures, faults, resume, DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_models import TINY_VQ

from tokenizer.data import TokenizerDataModule
from tokenizer.training import NonFiniteLossError, TokenizerModule
from unitok.data.shapes import random_scene, render
from unitok.data.shapes_shards import write_shapes_shards
from unitok.data.shards import ShardWriter

TINY = TINY_VQ


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    write_shapes_shards(root / "train", num=64, size=32, seed=0, split="train", shard_size=32, progress=False)
    write_shapes_shards(root / "val", num=16, size=32, seed=0, split="val", progress=False)
    return {"train": root / "train", "val": root / "val"}


def data_module(shards: dict[str, Path], **overrides) -> TokenizerDataModule:
    settings = dict(train_shards=str(shards["train"]), val_shards=str(shards["val"]), image_size=32, batch_size=8,
                    samples_per_epoch=32, num_workers=0)
    return TokenizerDataModule(**{**settings, **overrides})


def trainer(root: Path, max_steps: int, callbacks: list[Callback] = (), **overrides) -> L.Trainer:
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=2, save_top_k=-1)
    settings = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None,
        log_every_n_steps=1, num_sanity_val_steps=0, logger=CSVLogger(root, name="logs"),
        callbacks=[checkpoint, *callbacks], enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )
    return L.Trainer(**{**settings, **overrides})


def module(**overrides) -> TokenizerModule:
    torch.manual_seed(0)
    return TokenizerModule(**{"tokenizer": TINY, "warmup_steps": 1, "channels_last": False, **overrides})


def logged_metrics(root: Path) -> dict[str, list[float]]:
    rows = list(csv.DictReader(open(next(root.glob("logs/version_*/metrics.csv")))))
    return {key: [float(row[key]) for row in rows if row.get(key)] for key in rows[0]}


def test_fit_logs_metrics_and_writes_pictures_and_checkpoints(shards, tmp_path):
    trainer(tmp_path, max_steps=4).fit(module(), datamodule=data_module(shards))
    metrics = logged_metrics(tmp_path)
    for key in ("train/l1", "train/l2", "train/quantizer", "train/psnr", "train/dead_codes",
                "val/psnr", "val/ssim", "val/codebook_usage", "val/perplexity"):
        assert metrics[key], f"{key} was not logged"
    assert all(0 < usage <= 100 for usage in metrics["val/codebook_usage"])
    assert all(1 <= p <= 32 for p in metrics["val/perplexity"])
    run_dir = next(tmp_path.glob("logs/version_*"))
    assert sorted(p.name for p in (run_dir / "reconstructions").glob("*.png")) == ["step-0000002.png", "step-0000004.png"]
    assert (run_dir / "codebook_usage.png").stat().st_size > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_a_run_stopped_between_checkpoint_marks_saves_its_final_state(shards, tmp_path):
    trainer(tmp_path, max_steps=3).fit(module(), datamodule=data_module(shards))  # marks every 2 steps
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


class PoisonBatch(Callback):
    """Turns the inputs of one batch into NaN, as a diverging run would."""

    def __init__(self, at_batch: int):
        self.at_batch = at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at_batch:
            batch.fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite .*step 3.*last\.ckpt"):
        trainer(tmp_path, max_steps=6, callbacks=[PoisonBatch(at_batch=3)]).fit(module(), datamodule=data_module(shards))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


class RecordOptimizerAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.state = {k: {n: t.clone() for n, t in v.items()} for k, v in trainer.optimizers[0].state_dict()["state"].items()}
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_restores_optimizer_state_and_step(shards, tmp_path):
    trainer(tmp_path, max_steps=2).fit(module(), datamodule=data_module(shards))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    record = RecordOptimizerAtStart()
    trainer(tmp_path, max_steps=4, callbacks=[record]).fit(
        module(), datamodule=data_module(shards), ckpt_path=tmp_path / "checkpoints" / "last.ckpt"
    )
    assert record.global_step == 2
    saved_state = saved["optimizer_states"][0]["state"]
    assert record.state.keys() == saved_state.keys() and len(saved_state) > 0
    for index, tensors in saved_state.items():
        assert int(record.state[index]["step"]) == 2
        torch.testing.assert_close(record.state[index]["exp_avg"], tensors["exp_avg"])
    assert record.lr == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])


def test_corrupt_members_are_skipped_and_counted(shards, tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "broken", prefix="broken") as writer:
        for index in range(12):
            image = render(random_scene(rng), 32)
            writer.write({"__key__": f"s{index:03d}", "png": b"not a png" if index % 4 == 0 else image, "txt": "x"})
    data = data_module({"train": tmp_path / "broken", "val": tmp_path / "broken"}, batch_size=3)
    batches = list(data.val_dataloader())
    assert sum(len(batch) for batch in batches) == 9
    assert data.skipped.count == 3


class DumpCodebook(Callback):
    """Saves each rank's codebook after the last step (the EMA update has run on every rank)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        codebook = pl_module.tokenizer.quantize._codebook
        torch.save({"embed": codebook.embed.detach().clone(), "use_ddp": codebook.use_ddp},
                   self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_one_codebook(shards, tmp_path):
    """DDP on CPU (gloo): each rank reads its own shard, yet the EMA codebook stays identical."""
    run = trainer(tmp_path, max_steps=3, callbacks=[DumpCodebook(tmp_path)], devices=2, strategy="ddp_spawn")
    run.fit(module(tokenizer={**TINY, "threshold_ema_dead_code": 0.0}), datamodule=data_module(shards))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["use_ddp"] and ranks[1]["use_ddp"]
    torch.testing.assert_close(ranks[0]["embed"], ranks[1]["embed"], rtol=0, atol=0)


def test_random_crops_for_photos_are_resized_and_vary():
    from tokenizer.data import ImageTransform

    photo = {"key": "p", "image": np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)}
    crops = ImageTransform(32, random_crop=True, seed=0)
    first, second = crops(photo), crops(photo)
    assert first.shape == second.shape == (3, 32, 32) and not torch.equal(first, second)
    whole = ImageTransform(32, random_crop=False)
    assert torch.equal(whole(photo), whole(photo))
    assert -1 <= float(first.min()) and float(first.max()) <= 1


def test_consistency_trains_the_clean_view_and_reports_code_agreement(shards, tmp_path):
    """With (rendering, clean render) batches and a consistency weight, the clean view is
    reconstructed too and the rendering's latents are pulled into the clean view's code bins."""
    tokenizer = {**TINY, "quantizer": "fsq", "fsq_levels": (4, 4, 4), "encoder_type": "patch"}
    trainer(tmp_path, max_steps=4).fit(module(tokenizer=tokenizer, consistency_weight=0.1),
                                       datamodule=data_module(shards, target_view="clean"))
    metrics = logged_metrics(tmp_path)
    assert metrics["train/consistency"] and all(value >= 0 for value in metrics["train/consistency"])
    assert all(0 <= value <= 1 for value in metrics["train/code_agreement"] + metrics["val/code_agreement"])


def test_a_decoder_stage_keeps_every_code_and_trains_the_decoder(shards, tmp_path):
    """train_encoder=False from a pretrained folder: code shards made before the stage stay valid."""
    from tokenizer.model import VQTokenizer
    from unitok.errors import UserError

    torch.manual_seed(0)
    start = VQTokenizer(**{**TINY, "quantizer": "fsq", "fsq_levels": (4, 4, 4), "encoder_type": "patch"})
    start.save_pretrained(tmp_path / "start")
    stage = module(pretrained=str(tmp_path / "start"), train_encoder=False, consistency_weight=0.1)
    assert stage.tokenizer.training  # from_pretrained returns eval mode; a stage trains in train mode
    trainer(tmp_path / "run", max_steps=3).fit(stage, datamodule=data_module(shards, target_view="clean"))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    trained = stage.tokenizer.eval()
    assert torch.equal(trained.encode(x), start.eval().encode(x))
    assert not torch.allclose(trained.decoder.conv_out.weight, start.decoder.conv_out.weight)
    assert stage.hparams["tokenizer"]["encoder_type"] == "patch"  # the export rebuilds this model
    start_vq = VQTokenizer(**TINY)
    start_vq.save_pretrained(tmp_path / "vq")
    with pytest.raises(UserError, match="fsq"):
        module(pretrained=str(tmp_path / "vq"), train_encoder=False)
