"""Reconstruction quality of the tokenizers: Shapes figures, and ours vs diffusers' VQModel on photos.

    python scripts/bench_tokenizer_quality.py shapes --tokenizer runs/shapes64/export --shards data/shapes/val
    python scripts/bench_tokenizer_quality.py photos --train-shards data/photos/train \
        --val-shards data/photos/val --max-time 00:45:00 [--ours runs/photos/tokenizer/export]

``shapes``: PSNR on held-out scenes, scene accuracy of ``analyze(decode(encode(x)))`` against the
true scene, codebook usage and perplexity over the same images.

``photos``: both tokenizers get the same diffusers Encoder/Decoder sizes (from configs/tokenizer/photo128.yaml),
codebook size, data, seed, training loop (our TokenizerModule) and the same budget: ``--max-time``
of wall time (``--steps`` for a step count); only the quantizer differs: ours (vector-quantize-pytorch,
cosine-sim, k-means init, dead-code replacement) vs ``VQModel``'s built-in straight-through
``VectorQuantizer``. ``--ours EXPORT`` evaluates a tokenizer already trained for that budget (e.g.
by ``unitok train``) instead of training ours here; its training time is read from its run's
metrics. Beside them, bicubic down- and up-sampling by the tokenizer's factor: a 16x16 RGB image
spends 16*16*3*8 = 6,144 bits where 16x16 codes of 1,024 spend 2,560. Evaluation: PSNR/SSIM on the
held-out shards and on the colour photos that scikit-image ships (center-cropped and resized, never
trained on); codebook usage and perplexity on the held-out shards; training throughput. One table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from diffusers import VQModel
from PIL import Image
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from tokenizer.data import TokenizerDataModule
from tokenizer.images import pil_to_tensor
from tokenizer.model import TokenizerOutput
from tokenizer.training import TokenizerModule, psnr
from unitok.precision import training_precision

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


class StockVQ(nn.Module):
    """diffusers ``VQModel`` behind the interface TokenizerModule trains (forward/encode/decode)."""

    def __init__(self, settings: dict):
        super().__init__()
        levels = len(settings["block_out_channels"])
        self.vq = VQModel(
            block_out_channels=tuple(settings["block_out_channels"]), layers_per_block=settings["layers_per_block"],
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            latent_channels=settings["latent_channels"], num_vq_embeddings=settings["codebook_size"],
            norm_num_groups=settings["norm_num_groups"], sample_size=settings["image_size"],
            mid_block_add_attention=settings["mid_block_add_attention"],
        )
        self.vq.quantize.sane_index_shape = True  # [B, h, w] indices instead of flat ones
        self.codebook_size = settings["codebook_size"]

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        latents = self.vq.encode(images).latents
        quantized, loss, (_, _, indices) = self.vq.quantize(latents)
        reconstruction = self.vq.decode(quantized, force_not_quantize=True).sample
        return TokenizerOutput(reconstruction, indices.long(), loss, latents)


def train(config: dict, tokenizer: nn.Module | None, args: argparse.Namespace, root: Path) -> tuple[TokenizerModule, int]:
    """Train for ``args.max_time`` (or ``args.steps``); returns the module in eval mode and its steps."""
    L.seed_everything(args.seed)
    module = TokenizerModule(**config["model"])
    if tokenizer is not None:
        module.tokenizer = tokenizer
    data = TokenizerDataModule(**{**config["data"], "train_shards": args.train_shards, "val_shards": args.val_shards,
                                  "seed": args.seed})
    budget = {"max_time": args.max_time, "max_steps": -1} if args.max_time else {"max_steps": args.steps}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=config["trainer"].get("precision") or training_precision("cpu")[0],
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, **budget,
    )
    trainer.fit(module, datamodule=data)
    return module.eval(), trainer.global_step


def trained_elsewhere(export: Path) -> tuple[nn.Module, int, float]:
    """An exported tokenizer, with the steps and training seconds of its run (its ``last.ckpt``
    beside the export, as ``unitok tokenizer fit`` and ``unitok train`` leave it)."""
    from tokenizer import VQTokenizer
    from unitok.lightning_runs import read_checkpoint, training_seconds
    from unitok.run_layout import CHECKPOINTS, LAST_CHECKPOINT

    checkpoint = read_checkpoint(export.parent / CHECKPOINTS / LAST_CHECKPOINT, written_by="unitok tokenizer fit")
    seconds = training_seconds(checkpoint)
    if not seconds:
        raise SystemExit(f"{export.parent}/checkpoints/last.ckpt has no training time (train it with a max_time)")
    return VQTokenizer.from_pretrained(export, low_cpu_mem_usage=False).eval(), checkpoint["global_step"], seconds


@torch.no_grad()
def evaluate(tokenizer: nn.Module, photos: torch.Tensor, val_loader) -> dict[str, float]:
    """PSNR/SSIM of the reconstructions of the held-out shards and of ``photos``; code usage."""
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    val_psnr, val_ssim, images_seen = 0.0, 0.0, 0
    for images in val_loader:
        out = tokenizer(images)
        counts += torch.bincount(out.codes.flatten(), minlength=counts.numel())
        psnr_sum, ssim_sum = reconstruction_scores(out.reconstruction, images)
        val_psnr, val_ssim, images_seen = val_psnr + psnr_sum, val_ssim + ssim_sum, images_seen + len(images)
    photo_psnr, photo_ssim = reconstruction_scores(tokenizer(photos).reconstruction, photos)
    probabilities = counts.double() / counts.sum()
    nonzero = probabilities[probabilities > 0]
    return {
        "val_psnr": val_psnr / images_seen, "val_ssim": val_ssim / images_seen,
        "psnr": photo_psnr / len(photos), "ssim": photo_ssim / len(photos),
        "usage": 100.0 * float((counts > 0).sum()) / counts.numel(),
        "perplexity": float((-(nonzero * nonzero.log()).sum()).exp()),
    }


def reconstruction_scores(reconstruction: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """Sums over the batch of PSNR (dB) and SSIM, images in [-1, 1]."""
    reconstruction = reconstruction.float().clamp(-1, 1)
    ssim = structural_similarity_index_measure((reconstruction + 1) / 2, (images + 1) / 2, data_range=1.0,
                                               reduction="none")
    return float(psnr(reconstruction, images).sum()), float(ssim.sum())


class Bicubic(nn.Module):
    """Bicubic down- and up-sampling by ``factor`` (antialiased down), as a tokenizer-shaped baseline."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor, self.codebook_size = factor, 1

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        size = images.shape[-1]
        small = torch.nn.functional.interpolate(images, size=size // self.factor, mode="bicubic", antialias=True)
        reconstruction = torch.nn.functional.interpolate(small, size=size, mode="bicubic")
        return TokenizerOutput(reconstruction, torch.zeros(1, dtype=torch.long), torch.zeros(()), small)


def skimage_photos(size: int) -> torch.Tensor:
    import skimage.data

    return pil_to_tensor([Image.fromarray(getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOS], size)


@torch.no_grad()
def bench_shapes(args: argparse.Namespace) -> None:
    import numpy as np

    from tokenizer import VQTokenizer
    from tokenizer.images import array_to_tensor, tensor_to_pil
    from unitok.data.shapes import Scene, analyze
    from unitok.data.shards import iterate_samples

    model = VQTokenizer.from_pretrained(args.tokenizer, low_cpu_mem_usage=False).eval()
    samples = list(iterate_samples(args.shards))[: args.limit]
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    psnrs, correct = [], 0
    for start in range(0, len(samples), 100):
        chunk = samples[start:start + 100]
        images = torch.stack([array_to_tensor(s["image"]) for s in chunk])
        codes = model.encode(images)
        decoded = model.decode(codes)
        counts += torch.bincount(codes.flatten(), minlength=counts.numel())
        psnrs.append(psnr(decoded, images))
        for sample, picture in zip(chunk, tensor_to_pil(decoded), strict=True):
            correct += analyze(picture) == Scene.from_dict(sample["meta"]["scene"])
    probabilities = counts.double() / counts.sum()
    nonzero = probabilities[probabilities > 0]
    truth_readable = np.mean([analyze(Image.fromarray(s["image"])) == Scene.from_dict(s["meta"]["scene"]) for s in samples])
    print(f"tokenizer {args.tokenizer}: {model.image_size}px -> {model.grid_size} codes, codebook {model.codebook_size}")
    print(f"  held-out scenes               {len(samples)}")
    print(f"  PSNR                          {float(torch.cat(psnrs).mean()):.2f} dB")
    print(f"  scene accuracy (reconstructed){100 * correct / len(samples):8.1f} %  (analyzer on originals: {100 * truth_readable:.1f} %)")
    print(f"  codebook usage                {100 * float((counts > 0).sum()) / counts.numel():8.1f} %  "
          f"({int((counts > 0).sum())}/{counts.numel()} codes)")
    print(f"  perplexity                    {float((-(nonzero * nonzero.log()).sum()).exp()):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    shapes = sub.add_parser("shapes", help="a Shapes tokenizer on held-out scenes")
    shapes.add_argument("--tokenizer", required=True, help="exported tokenizer folder")
    shapes.add_argument("--shards", required=True, help="held-out Shapes shards (the val split)")
    shapes.add_argument("--limit", type=int, default=500, help="number of scenes")
    photos = sub.add_parser("photos", help="photo128 vs diffusers VQModel, trained for the same budget")
    photos.add_argument("--config", default="configs/tokenizer/photo128.yaml")
    photos.add_argument("--train-shards", required=True, help="photo shards to train on (random crops)")
    photos.add_argument("--val-shards", required=True, help="held-out photo shards for codebook usage")
    photos.add_argument("--steps", type=int, default=300, help="training steps of each tokenizer (without --max-time)")
    photos.add_argument("--max-time", help="wall time of each tokenizer's training, DD:HH:MM:SS (instead of --steps)")
    photos.add_argument("--ours", help="an exported tokenizer trained for that budget (its run's last.ckpt beside "
                                       "the export says how long): evaluated instead of training ours here")
    photos.add_argument("--seed", type=int, default=0)
    photos.add_argument("--out", default="runs/bench_quality", help="Lightning's root folder for the two runs")
    args = parser.parse_args()
    if args.bench == "shapes":
        bench_shapes(args)
    else:
        bench_photos(args)


def bench_photos(args: argparse.Namespace) -> None:
    config = yaml.safe_load(Path(args.config).read_text())
    settings = config["model"]["tokenizer"]
    photos = skimage_photos(settings["image_size"])
    val_loader = TokenizerDataModule(**{**config["data"], "val_shards": args.val_shards, "num_workers": 0}).val_dataloader()
    batch = config["data"]["batch_size"]
    factor = 2 ** (len(settings["block_out_channels"]) - 1)
    rows = {}
    for name in ("stock", "ours"):  # stock first: an --ours run may still be training
        if name == "ours" and args.ours is not None:
            tokenizer, steps, seconds = trained_elsewhere(Path(args.ours))
            label = f"ours ({Path(args.ours).parent.name}, vq-pytorch)"
        else:
            L.seed_everything(args.seed)
            start = time.perf_counter()
            module, steps = train(config, StockVQ(settings) if name == "stock" else None, args, Path(args.out) / name)
            tokenizer, seconds = module.tokenizer, time.perf_counter() - start
            label = "diffusers VQModel" if name == "stock" else "ours (photo128, vq-pytorch)"
        params = sum(p.numel() for p in tokenizer.parameters()) / 1e6
        rows[label] = {**evaluate(tokenizer, photos, val_loader), "params": f"{params:.2f}M", "steps": steps,
                       "minutes": seconds / 60, "images_s": steps * batch / seconds}
    rows[f"bicubic /{factor} and back"] = {**evaluate(Bicubic(factor), photos, val_loader), "params": "-"}
    rows[f"bicubic /{factor} and back"]["usage"] = rows[f"bicubic /{factor} and back"]["perplexity"] = float("nan")

    grid = settings["image_size"] // factor
    budget = f"{args.max_time} of wall time" if args.max_time else f"{args.steps} steps"
    print(f"\n{budget} each, {torch.get_num_threads()} thread(s), seed {args.seed}, batch {batch}, "
          f"{settings['image_size']}px -> {grid}x{grid} codes, codebook {settings['codebook_size']}")
    print(f"held out: {args.val_shards} (PSNR/SSIM, usage); skimage: {len(SKIMAGE_PHOTOS)} scikit-image photos")
    header = (f"{'tokenizer':<34}{'params':>7}{'val PSNR':>9}{'SSIM':>7}{'skimage PSNR':>13}{'SSIM':>7}"
              f"{'usage %':>8}{'perplexity':>11}{'steps':>7}{'train min':>10}{'img/s':>7}")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        trained = (f"{row['steps']:>7}{row['minutes']:>10.1f}{row['images_s']:>7.1f}" if "steps" in row
                   else f"{'-':>7}{'-':>10}{'-':>7}")
        print(f"{name:<34}{row['params']:>7}{row['val_psnr']:>9.2f}{row['val_ssim']:>7.3f}{row['psnr']:>13.2f}"
              f"{row['ssim']:>7.3f}{row['usage']:>8.1f}{row['perplexity']:>11.1f}{trained}")


if __name__ == "__main__":
    main()
