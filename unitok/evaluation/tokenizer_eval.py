"""How well an image tokenizer reconstructs held-out images, and how it uses its codebook.

Each image is read as training and ``unitok tokenize`` read it (the central square at the
tokenizer's size, ``tokenizer.data.ImageTransform``), encoded to codes and decoded back, batch by
batch. Figures:
- PSNR per image in dB (torchmetrics, pixels in [0, 1], data range 1), averaged over images;
  a pixel-exact reconstruction (infinite PSNR) counts as ``PSNR_CAP`` so one flat image cannot
  make the mean infinite;
- SSIM per image (torchmetrics: 11×11 Gaussian window, sigma 1.5, data range 1), averaged;
- codebook usage (the share of codes used at least once) and perplexity (``exp`` of the entropy
  of the code histogram: the number of equally used codes that would carry as much information);
- a grid of the first images, originals above their reconstructions.
These are the tokenizer's own validation metrics (``tokenizer.training``) on a set the user names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from tokenizer.data import ImageTransform, check_images, stack_batch
from tokenizer.images import tensor_to_pil
from tokenizer.model import VQTokenizer
from unitok.data.shards import SkipCounter, read_shards
from unitok.errors import UserError
from unitok.evaluation.reports import write_files

PSNR_CAP = 100.0  # dB; a mean squared error of 1e-10 on pixels in [0, 1]
GRID_IMAGES = 16


def psnr(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, 3, H, W]`` images in [0, 1], capped at ``PSNR_CAP``."""
    values = peak_signal_noise_ratio(reconstructions, originals, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.clamp(max=PSNR_CAP)


def ssim(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``[B, 3, H, W]`` images in [0, 1]."""
    return structural_similarity_index_measure(reconstructions, originals, data_range=1.0, reduction="none")


def codebook_statistics(counts: torch.Tensor) -> tuple[int, float]:
    """(codes used at least once, perplexity) of a histogram of code hits."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    used = probabilities[probabilities > 0]
    return int((counts > 0).sum()), float((-(used * used.log()).sum()).exp())


@dataclass
class TokenizerEvaluation:
    images: int
    psnr: float  # dB, mean over images
    ssim: float
    codes_used: int
    codebook_size: int
    perplexity: float
    skipped: int  # corrupt members and samples without an image
    grid: Image.Image
    settings: dict = field(default_factory=dict)

    @property
    def usage(self) -> float:
        return self.codes_used / self.codebook_size

    def as_dict(self) -> dict:
        return {"settings": self.settings, "images": self.images, "skipped": self.skipped, "psnr": self.psnr,
                "psnr_cap": PSNR_CAP, "ssim": self.ssim, "codebook_usage": self.usage,
                "codes_used": self.codes_used, "codebook_size": self.codebook_size, "perplexity": self.perplexity}

    def summary(self) -> str:
        return (f"PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}, codebook usage {100 * self.usage:.1f}% "
                f"({self.codes_used}/{self.codebook_size}), perplexity {self.perplexity:.1f} on {self.images} images")

    def markdown(self) -> str:
        s = self.settings
        return "\n".join([
            "# Image tokenizer evaluation", "",
            f"Tokenizer `{s.get('tokenizer', '')}` on `{s.get('shards', '')}`: {self.images} images at "
            f"{s['image_size']} px, {'×'.join(map(str, s['grid']))} codes each" +
            (f"; {self.skipped} unreadable samples skipped" if self.skipped else "") + ".", "",
            "| PSNR (dB) | SSIM | codebook usage | codes used | perplexity |", "|---|---|---|---|---|",
            f"| {self.psnr:.2f} | {self.ssim:.4f} | {100 * self.usage:.1f}% | {self.codes_used} / {self.codebook_size} "
            f"| {self.perplexity:.1f} |", "",
            f"PSNR per image on pixels in [0, 1] (data range 1), a pixel-exact image counted as {PSNR_CAP:.0f} dB; "
            "SSIM with an 11×11 Gaussian window; perplexity = exp(entropy of the code histogram).", "",
            "`reconstructions.png`: originals above their reconstructions.", "",
        ])


def evaluate_tokenizer(model: VQTokenizer, source: str | os.PathLike | list[str], *, num: int | None = None,
                       batch_size: int = 32, progress: bool = True, settings: dict | None = None) -> TokenizerEvaluation:
    """Reconstruct the first ``num`` images of ``source`` (all when None) with ``model`` (on its device)."""
    check_images(source)
    skipped = SkipCounter("shard member")
    dataset = read_shards(source, training=False, transform=ImageTransform(model.image_size, random_crop=False),
                          skip_counter=skipped)
    if num is not None:
        dataset = dataset.slice(num)
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    psnr_sum, ssim_sum, images = 0.0, 0.0, 0
    originals, reconstructions = [], []
    with torch.inference_mode(), tqdm(total=num, desc="eval tokenizer", unit="image", disable=not progress) as bar:
        for batch in dataset.batched(batch_size, collation_fn=stack_batch, partial=True):
            batch = batch.to(model.device)
            codes = model.encode(batch)
            decoded = model.decode(codes)
            target, output = (batch + 1) / 2, (decoded.float() + 1) / 2
            psnr_sum += float(psnr(output, target).sum())
            ssim_sum += float(ssim(output, target).sum())
            counts += torch.bincount(codes.flatten().cpu(), minlength=model.codebook_size)
            if len(originals) < GRID_IMAGES:
                originals += list(batch[: GRID_IMAGES - len(originals)].cpu())
                reconstructions += list(decoded[: len(originals) - len(reconstructions)].cpu())
            images += batch.shape[0]
            bar.update(batch.shape[0])
    if not images:
        raise UserError(f"no image of {source} could be read ({skipped.count} samples skipped as corrupt)")
    used, perplexity = codebook_statistics(counts)
    return TokenizerEvaluation(images=images, psnr=psnr_sum / images, ssim=ssim_sum / images, codes_used=used,
                               codebook_size=model.codebook_size, perplexity=perplexity, skipped=skipped.count,
                               grid=reconstruction_grid(torch.stack(originals), torch.stack(reconstructions)),
                               settings={"image_size": model.image_size, "grid": list(model.grid_size),
                                         **(settings or {})})


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, columns: int = 8,
                        min_tile: int = 64, gap: int = 2) -> Image.Image:
    """``[N, 3, H, W]`` images in [-1, 1]: rows of up to ``columns`` originals, each above a row
    of their reconstructions; small images are enlarged (nearest) to ``min_tile`` px."""
    tops, bottoms = tensor_to_pil(originals), tensor_to_pil(reconstructions)
    side = max(originals.shape[-1], min_tile)
    step_x, step_y = side + gap, 2 * (side + gap) + 4 * gap  # a wider gap between pairs of rows
    rows = (len(tops) + columns - 1) // columns
    grid = Image.new("RGB", (min(columns, len(tops)) * step_x - gap, (rows - 1) * step_y + 2 * side + gap), "white")
    for index, (top, bottom) in enumerate(zip(tops, bottoms, strict=True)):
        x, y = (index % columns) * step_x, (index // columns) * step_y
        grid.paste(top.resize((side, side), Image.NEAREST), (x, y))
        grid.paste(bottom.resize((side, side), Image.NEAREST), (x, y + side + gap))
    return grid


def write_report(evaluation: TokenizerEvaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """report.md, report.json and reconstructions.png in ``out_dir``, each written atomically."""
    return write_files(out_dir, {"report.md": evaluation.markdown(), "report.json": evaluation.as_dict(),
                                 "reconstructions.png": evaluation.grid})
