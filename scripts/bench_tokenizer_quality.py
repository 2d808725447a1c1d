"""Reconstruction quality of the tokenizers: Shapes figures, and photo128 vs diffusers' VQModel.

    python scripts/bench_tokenizer_quality.py shapes --tokenizer runs/shapes64/export --shards data/shapes/val
    python scripts/bench_tokenizer_quality.py photos --train-shards data/photos/train \
        --val-shards data/photos/val --steps 300

``shapes``: PSNR on held-out scenes, scene accuracy of ``analyze(decode(encode(x)))`` against the
true scene, codebook usage and perplexity over the same images.

``photos``: both tokenizers get the same diffusers Encoder/Decoder sizes (from configs/tokenizer/photo128.yaml),
codebook size, data, steps, seed and training loop (our TokenizerModule); only the quantizer
differs: ours (vector-quantize-pytorch, cosine-sim, k-means init, dead-code replacement) vs
``VQModel``'s built-in straight-through ``VectorQuantizer``. Evaluation: PSNR/SSIM on the colour
photos that scikit-image ships (center-cropped and resized, never trained on) and codebook usage
on the validation shards. Prints one table.
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


def train(config: dict, tokenizer: nn.Module | None, args: argparse.Namespace, root: Path) -> TokenizerModule:
    L.seed_everything(args.seed)
    module = TokenizerModule(**config["model"])
    if tokenizer is not None:
        module.tokenizer = tokenizer
    data = TokenizerDataModule(**{**config["data"], "train_shards": args.train_shards, "val_shards": args.val_shards,
                                  "seed": args.seed})
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=config["trainer"].get("precision") or training_precision("cpu")[0], max_steps=args.steps,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )
    trainer.fit(module, datamodule=data)
    return module.eval()


@torch.no_grad()
def evaluate(module: TokenizerModule, photos: torch.Tensor, val_loader) -> dict[str, float]:
    out = module.tokenizer(photos)
    reconstruction = out.reconstruction.float().clamp(-1, 1)
    counts = torch.zeros(module.tokenizer.codebook_size, dtype=torch.long)
    for images in val_loader:
        codes = module.tokenizer(images).codes
        counts += torch.bincount(codes.flatten(), minlength=counts.numel())
    probabilities = counts.double() / counts.sum()
    nonzero = probabilities[probabilities > 0]
    return {
        "psnr": float(psnr(reconstruction, photos).mean()),
        "ssim": float(structural_similarity_index_measure((reconstruction + 1) / 2, (photos + 1) / 2, data_range=1.0)),
        "usage": 100.0 * float((counts > 0).sum()) / counts.numel(),
        "perplexity": float((-(nonzero * nonzero.log()).sum()).exp()),
    }


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
    photos = sub.add_parser("photos", help="photo128 vs diffusers VQModel, trained identically")
    photos.add_argument("--config", default="configs/tokenizer/photo128.yaml")
    photos.add_argument("--train-shards", required=True, help="photo shards to train on (random crops)")
    photos.add_argument("--val-shards", required=True, help="held-out photo shards for codebook usage")
    photos.add_argument("--steps", type=int, default=300, help="training steps of each tokenizer")
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
    rows = {}
    for name, tokenizer in (("ours (photo128, vq-pytorch)", None), ("diffusers VQModel", "stock")):
        start = time.perf_counter()
        if tokenizer == "stock":
            L.seed_everything(args.seed)
            tokenizer = StockVQ(settings)
        module = train(config, tokenizer, args, Path(args.out))
        minutes = (time.perf_counter() - start) / 60
        rows[name] = {**evaluate(module, photos, val_loader), "minutes": minutes}
        params = sum(p.numel() for p in module.tokenizer.parameters()) / 1e6
        rows[name]["params"] = params

    grid = f"{settings['image_size'] // 2 ** (len(settings['block_out_channels']) - 1)}"
    print(f"\n{args.steps} steps each, seed {args.seed}, batch {config['data']['batch_size']}, "
          f"{settings['image_size']}px -> {grid}x{grid} codes, codebook {settings['codebook_size']}")
    print(f"PSNR/SSIM on {len(SKIMAGE_PHOTOS)} scikit-image photos ({', '.join(SKIMAGE_PHOTOS)}); "
          f"codebook usage on {args.val_shards}")
    header = f"{'tokenizer':<30}{'params':>8}{'PSNR dB':>9}{'SSIM':>7}{'usage %':>9}{'perplexity':>12}{'train min':>10}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:<30}{row['params']:>7.2f}M{row['psnr']:>9.2f}{row['ssim']:>7.3f}{row['usage']:>9.1f}"
              f"{row['perplexity']:>12.1f}{row['minutes']:>10.1f}")


if __name__ == "__main__":
    main()
