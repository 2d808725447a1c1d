"""Losses: the perceptual loss only runs on local weights; PatchGAN hinge losses; imagenet256 smoke run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tokenizer.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    build_perceptual_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    vgg16_features,
)
from tokenizer.training import run_tokenizer_cli
from unitok.data.shapes_shards import write_shapes_shards

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "tokenizer"


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> Path:
    """Random weights in torchvision's vgg16 layout: what a user would pass, minus the training."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in vgg16_features().state_dict().items()}, str(path))
    return path


def test_perceptual_loss_is_off_without_local_weights(caplog):
    with caplog.at_level(logging.WARNING):
        assert build_perceptual_loss(1.0, None) is None
    assert "perceptual loss is OFF" in caplog.text and "never downloaded" in caplog.text
    assert build_perceptual_loss(0.0, "/does/not/matter") is None


def test_perceptual_loss_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16 state dict"):
        PerceptualLoss(tmp_path / "missing.safetensors")


def test_perceptual_loss_is_zero_for_identical_images_and_has_gradients(vgg_weights):
    loss = PerceptualLoss(vgg_weights)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    reconstruction = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    value = loss(reconstruction, target)
    value.backward()
    assert value > 0 and reconstruction.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_hinge_losses_and_patch_discriminator():
    disc = PatchDiscriminator(3, channels=8, num_layers=2)
    logits = disc(torch.zeros(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    confident = hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))
    assert float(confident) == 0.0
    assert float(hinge_discriminator_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(1.0)
    assert float(hinge_generator_loss(torch.full((4,), 3.0))) == -3.0


@pytest.mark.slow
def test_imagenet256_reference_config_runs_one_step_on_cpu(vgg_weights, tmp_path):
    """The GPU config as written (f16, 16x16 codes, 16384 codes, GAN + perceptual), forced onto a CPU."""
    write_shapes_shards(tmp_path / "train", num=4, size=256, seed=0, split="train", progress=False)
    write_shapes_shards(tmp_path / "val", num=2, size=256, seed=0, split="val", progress=False)
    run_tokenizer_cli([
        "fit", "--config", str(CONFIGS / "imagenet256.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),  # the logs and checkpoints follow it
        "--model.perceptual_weights_path", str(vgg_weights), "--model.gan_start_step", "0",
        "--data.train_shards", str(tmp_path / "train"), "--data.val_shards", str(tmp_path / "val"),
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.samples_per_epoch", "4",
        "--data.val_samples", "2",
    ])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2  # one batch: a generator and a discriminator step
    assert saved["hyper_parameters"]["tokenizer"]["codebook_size"] == 16384
    assert any(k.startswith("discriminator.") for k in saved["state_dict"])
    assert len(saved["optimizer_states"]) == 2
