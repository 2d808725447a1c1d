"""The tokenizer's LightningModule (losses, metrics, pictures) and its LightningCLI launcher.

Devices, precision, DDP/FSDP and checkpoints belong to the Trainer (the YAML configs).
Optimization is manual so an optional PatchGAN discriminator gets its own step after the
generator's; Lightning then counts two optimizer steps per batch towards ``max_steps``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from tokenizer.data import TokenizerDataModule
from tokenizer.images import tensor_to_pil
from tokenizer.losses import (
    PatchDiscriminator,
    build_perceptual_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_file
from unitok.callbacks import SaveFinalCheckpoint
from unitok.errors import UserError
from unitok.lightning_runs import launch_cli
from unitok.schedules import warmup_cosine_factor

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training produced NaN/inf; the run stops before the bad step touches weights or checkpoints."""


class TokenizerModule(L.LightningModule):
    """Trains a ``VQTokenizer``.

    Args:
        tokenizer: keyword arguments of ``VQTokenizer`` (its config: sizes, quantizer, codebook).
        pretrained: an exported tokenizer folder to start from instead (its own config is used).
        train_encoder: False freezes everything that decides the codes (the encoder and FSQ's
            input projection) and trains the decoder alone: the codes of every image stay as they
            were, so code shards made with the pretrained tokenizer stay valid (fsq only).
        learning_rate: peak AdamW learning rate of the tokenizer.
        betas, weight_decay: AdamW settings.
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        min_lr_ratio: cosine decay from the peak to ``learning_rate * min_lr_ratio`` by the last step
            or by the end of ``trainer.max_time``, whichever comes first (``unitok.schedules``).
        l1_weight, l2_weight: reconstruction loss weights (images in [-1, 1]).
        perceptual_weight: LPIPS-style loss weight; needs ``perceptual_weights_path`` (local VGG16
            weights), otherwise it is off with a log line. Nothing is ever downloaded.
        gan_weight: PatchGAN hinge generator-loss weight (0 turns the discriminator off).
        gan_start_step: optimizer step at which the adversarial loss starts.
        disc_learning_rate, disc_channels, disc_layers: the discriminator.
        consistency_weight: for (input, clean target) batches (``data.target_view``): the clean
            view is encoded and reconstructed too, and what FSQ rounds for the input is pulled into
            the clean view's bins with this weight, so every rendering of an image gets the clean
            image's codes (0: off; fsq only).
        grad_clip: gradient-norm clip of the tokenizer (0: no clipping).
        channels_last: channels-last memory format (faster convolutions on many CPUs).
        grid_images: originals/reconstructions written as a PNG grid at each validation.
    """

    def __init__(
        self,
        tokenizer: dict[str, Any] | None = None,
        pretrained: str | None = None,
        train_encoder: bool = True,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_weights_path: str | None = None,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        disc_learning_rate: float = 1e-4,
        disc_channels: int = 64,
        disc_layers: int = 3,
        consistency_weight: float = 0.0,
        grad_clip: float = 1.0,
        channels_last: bool = True,
        grid_images: int = 8,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if pretrained is not None:
            try:
                # from_pretrained returns eval mode, and Lightning keeps the mode a module arrives in.
                self.tokenizer = VQTokenizer.from_pretrained(pretrained).train()
            except (OSError, ValueError) as error:
                raise UserError(f"cannot load the tokenizer to start from, {pretrained!r}: {error}") from error
            # The checkpoint's config is the model's own, so an export rebuilds exactly this model.
            self.hparams["tokenizer"] = {k: v for k, v in self.tokenizer.config.items() if not k.startswith("_")}
        else:
            self.tokenizer = VQTokenizer(**(tokenizer or {}))
        if not train_encoder:
            if self.tokenizer.config.quantizer != "fsq":
                raise UserError("model.train_encoder: false needs an fsq tokenizer (a learned codebook would drift)")
            self.tokenizer.encoder.requires_grad_(False)
            self.tokenizer.quantize.project_in.requires_grad_(False)
        if channels_last:
            self.tokenizer.to(memory_format=torch.channels_last)
        self.perceptual = build_perceptual_loss(perceptual_weight, perceptual_weights_path)
        self.discriminator = PatchDiscriminator(3, disc_channels, disc_layers) if gan_weight > 0 else None
        size = self.tokenizer.codebook_size
        # Code counts: over the current logging window (training) and over one validation pass.
        self.register_buffer("train_counts", torch.zeros(size, dtype=torch.long), persistent=False)
        self.register_buffer("val_counts", torch.zeros(size, dtype=torch.long), persistent=False)
        self.last_val_counts: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------
    # Setup

    def setup(self, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: ask on every rank here, not later on rank 0 only.
        self.run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.world_size > 1:
            self.tokenizer.enable_codebook_sync()

    def configure_callbacks(self) -> list[L.Callback]:
        return [SaveFinalCheckpoint()]

    def configure_optimizers(self):
        h = self.hparams
        trained = [p for p in self.tokenizer.parameters() if p.requires_grad]
        generator = torch.optim.AdamW(trained, lr=h.learning_rate, betas=tuple(h.betas), weight_decay=h.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(generator, self._lr_factor)
        if self.discriminator is None:
            return [generator], [schedule]
        disc = torch.optim.AdamW(self.discriminator.parameters(), lr=h.disc_learning_rate, betas=(0.5, 0.9))
        return [generator, disc], [schedule]

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.trainer, self.hparams.warmup_steps, self.hparams.min_lr_ratio)

    # ------------------------------------------------------------------------------------------
    # Training

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _inputs_and_targets(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]):
        """A batch is images (reconstruct them) or (inputs, targets): denoising, e.g. a JPEG of a
        scene in, its clean render out, so codes do not depend on how an image was saved."""
        inputs, targets = batch if isinstance(batch, tuple | list) else (batch, batch)
        return self._prepare(inputs), self._prepare(targets)

    def training_step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        h = self.hparams
        inputs, images = self._inputs_and_targets(batch)
        with_clean = h.consistency_weight > 0 and isinstance(batch, tuple | list)
        if with_clean:  # the clean view learns to reconstruct itself beside the input
            inputs, images = torch.cat([inputs, images]), torch.cat([images, images])
        optimizers = self.optimizers()
        generator = optimizers[0] if isinstance(optimizers, list) else optimizers
        out = self.tokenizer(inputs)
        reconstruction = out.reconstruction.float()
        losses = {
            "l1": F.l1_loss(reconstruction, images),
            "l2": F.mse_loss(reconstruction, images),
            "quantizer": out.aux_loss,
        }
        total = h.l1_weight * losses["l1"] + h.l2_weight * losses["l2"] + losses["quantizer"]
        if with_clean:
            # Toward the centre of the clean view's bin: it also keeps the codes few and well apart
            # (pulling toward the clean view's own value instead used twice the codes, agreed with
            # the clean codes less often and reconstructed no better: docs/results.md).
            given, clean = (self.tokenizer.rounding_inputs(half) for half in out.latents.chunk(2))
            losses["consistency"] = F.mse_loss(given, clean.round().detach())
            losses["code_agreement"] = (given.round() == clean.round()).all(-1).float().mean().detach()
            if h.train_encoder:  # a frozen encoder's codes are what they are
                total = total + h.consistency_weight * losses["consistency"]
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(reconstruction, images)
            total = total + h.perceptual_weight * losses["perceptual"]
        gan_on = self.discriminator is not None and self.global_step >= h.gan_start_step
        if gan_on:
            self.discriminator.requires_grad_(False)
            losses["generator"] = hinge_generator_loss(self.discriminator(reconstruction))
            total = total + h.gan_weight * losses["generator"]
        losses["total"] = total
        self._check_finite(losses)

        generator.zero_grad(set_to_none=True)
        self.manual_backward(total)
        grad_norm = self._clip(self.tokenizer.parameters())
        generator.step()
        self.lr_schedulers().step()

        if gan_on:
            self.discriminator.requires_grad_(True)
            disc_loss = hinge_discriminator_loss(self.discriminator(images), self.discriminator(reconstruction.detach()))
            self._check_finite({"discriminator": disc_loss})
            disc = optimizers[1]
            disc.zero_grad(set_to_none=True)
            self.manual_backward(disc_loss)
            disc.step()
            losses["discriminator"] = disc_loss

        self.train_counts += torch.bincount(out.codes.flatten(), minlength=self.tokenizer.codebook_size)
        logs = {f"train/{name}": value.detach() for name, value in losses.items()}
        logs["train/psnr"] = psnr(reconstruction.detach(), images).mean()
        logs["train/grad_norm"] = grad_norm
        logs["train/lr"] = torch.tensor(generator.param_groups[0]["lr"])
        self.log_dict(logs, prog_bar=False)
        self.log("psnr", logs["train/psnr"], prog_bar=True, logger=False)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._log_dead_codes()

    def _clip(self, parameters) -> torch.Tensor:
        clip = self.hparams.grad_clip if self.hparams.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
        if not torch.isfinite(norm):
            self._check_finite({"gradient norm": norm})
        return norm

    def _check_finite(self, values: dict[str, torch.Tensor]) -> None:
        bad = [name for name, value in values.items() if not torch.isfinite(value).all()]
        if bad:
            checkpoint = _last_checkpoint(self.trainer)
            raise NonFiniteLossError(
                f"non-finite {', '.join(bad)} at step {self.global_step}: training stopped before this step "
                f"changed any weights. Last good checkpoint: {checkpoint or 'none saved yet'}. "
                "Lower the learning rate or loss weights, then resume with --ckpt_path."
            )

    def _log_dead_codes(self) -> None:
        """Codes not chosen once over the last logging window (summed over ranks)."""
        counts = self.train_counts.clone()
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        self.log("train/dead_codes", float((counts == 0).sum()), rank_zero_only=True)
        self.train_counts.zero_()

    # ------------------------------------------------------------------------------------------
    # Validation

    def on_validation_epoch_start(self) -> None:
        self.val_counts.zero_()

    def validation_step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, images = self._inputs_and_targets(batch)
        out = self.tokenizer(inputs)
        reconstruction = out.reconstruction.float().clamp(-1, 1)
        self.val_counts += torch.bincount(out.codes.flatten(), minlength=self.tokenizer.codebook_size)
        if isinstance(batch, tuple | list):  # how often a rendering gets its clean image's code
            agreement = (out.codes == self.tokenizer.encode(images)).float().mean()
            self.log("val/code_agreement", agreement, batch_size=images.shape[0], sync_dist=True, prog_bar=True)
        batch = images.shape[0]
        self.log("val/psnr", psnr(reconstruction, images).mean(), batch_size=batch, sync_dist=True, prog_bar=True)
        ssim = structural_similarity_index_measure((reconstruction + 1) / 2, (images + 1) / 2, data_range=1.0)
        self.log("val/ssim", ssim, batch_size=batch, sync_dist=True)
        self.log("val/l1", F.l1_loss(reconstruction, images), batch_size=batch, sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._write_grid(inputs[: self.hparams.grid_images], reconstruction[: self.hparams.grid_images])

    def on_validation_epoch_end(self) -> None:
        # Every rank reads the whole validation set, so its counts are already the full histogram.
        counts = self.val_counts.clone()
        used = int((counts > 0).sum())
        probabilities = counts.double() / counts.sum().clamp(min=1)
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        self.log("val/codebook_usage", 100.0 * used / counts.numel(), sync_dist=True, prog_bar=True)
        self.log("val/perplexity", float(entropy.exp()), sync_dist=True)
        self.last_val_counts = counts.cpu()

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.last_val_counts is not None:
            path = write_usage_histogram(self.last_val_counts, self.run_dir / "codebook_usage.png")
            log.info("codebook usage histogram written to %s", path)

    def _write_grid(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        """Top row originals, bottom row reconstructions, one PNG per validation."""
        tiles = tensor_to_pil(torch.cat([originals, reconstructions]))
        count, (width, height) = originals.shape[0], tiles[0].size
        grid = Image.new("RGB", (count * width, 2 * height))
        for index, tile in enumerate(tiles):
            grid.paste(tile, ((index % count) * width, (index // count) * height))
        with atomic_file(self.run_dir / "reconstructions" / f"step-{self.global_step:07d}.png") as path:
            grid.save(path, format="PNG")


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstruction - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


def write_usage_histogram(counts: torch.Tensor, path: Path) -> Path:
    """Bar plot of validation hits per code, sorted: shows at a glance how evenly codes are used.

    A plain matplotlib ``Figure`` (no pyplot): nothing global such as the backend is changed."""
    ordered = counts.sort(descending=True).values.numpy()
    used = int((counts > 0).sum())
    figure = Figure(figsize=(8, 3))
    axis = figure.subplots()
    axis.bar(range(len(ordered)), ordered, width=1.0)
    axis.set_xlabel("code (sorted by use)")
    axis.set_ylabel("hits on validation")
    axis.set_title(f"codebook usage: {used}/{len(ordered)} codes ({100 * used / len(ordered):.1f}%)")
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary)
    return path


def _last_checkpoint(trainer: L.Trainer | None) -> str | None:
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    if callback is None:
        return None
    return getattr(callback, "last_model_path", None) or getattr(callback, "best_model_path", None) or None


def run_tokenizer_cli(args: list[str], run: bool = True) -> LightningCLI:
    """``unitok tokenizer fit|validate ...``: LightningCLI over ``TokenizerModule`` and its data.

    No sanity validation by default: k-means codebook init runs on the first forward even under
    no_grad, so a sanity pass would initialise the codebook from validation data.
    """
    return launch_cli(TokenizerModule, TokenizerDataModule, args, run=run,
                      trainer_defaults={"num_sanity_val_steps": 0, "default_root_dir": "runs/tokenizer"})
