"""Throughput of the image tokenizer: encode, decode, training, and the shard loader alone.

    python scripts/bench_tokenizer.py --tokenizer runs/shapes64/export \
        --config configs/tokenizer/shapes64.yaml --shards data/shapes/train [--precisions 32-true bf16-mixed]

Prints images/s for encode and decode at batch 1 and 32 (inference mode, the tokenizer as
exported), training images/s (the real Lightning loop of the config, including data loading,
timed after the first batches) in each precision asked for (default: the config's, else the one
the hardware gets, ``unitok.precision``) and the loader's images/s alone, which must be at least
5x the training rate so data never starves the model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from tokenizer import VQTokenizer
from tokenizer.data import TokenizerDataModule
from tokenizer.training import TokenizerModule
from unitok.data.shards import iterate_samples
from unitok.precision import training_precision

WARMUP_BATCHES = 3


def batch_images(batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> int:
    """Images in a batch: a tensor, or (inputs, targets) for denoising configs."""
    return (batch[0] if isinstance(batch, tuple | list) else batch).shape[0]


def images_from_shards(shards: str, count: int, image_size: int) -> torch.Tensor:
    from tokenizer.data import ImageTransform

    transform = ImageTransform(image_size, random_crop=False)  # the inputs alone
    batch = []
    for sample in iterate_samples(shards):
        batch.append(transform(sample))
        if len(batch) == count:
            break
    return torch.stack(batch)


def rate(fn, items: int, repeats: int) -> float:
    fn()  # warm-up (allocations, k-means is already done in an exported model)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - start)


def bench_inference(model: VQTokenizer, images: torch.Tensor) -> dict[str, float]:
    results = {}
    with torch.inference_mode():
        for batch in (1, 32):
            x = images[:batch]
            codes = model.encode(x)
            repeats = max(3, 64 // batch)
            results[f"encode images/s (batch {batch})"] = rate(lambda x=x: model.encode(x), batch, repeats)
            results[f"decode images/s (batch {batch})"] = rate(lambda c=codes: model.decode(c), batch, repeats)
    return results


class Throughput(Callback):
    """Images/s over training batches after WARMUP_BATCHES (start-up and k-means init excluded)."""

    def __init__(self):
        self.start, self.images = None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == WARMUP_BATCHES:
            self.start = time.perf_counter()
        elif batch_idx > WARMUP_BATCHES:
            self.images += batch_images(batch)

    def on_train_end(self, trainer, pl_module):
        self.images_per_s = self.images / (time.perf_counter() - self.start)


def bench_training(config: dict, shards: str, steps: int, precision: str) -> float:
    model_args = {k: v for k, v in config["model"].items()}
    data_args = {**config["data"], "train_shards": shards, "val_shards": shards}
    throughput = Throughput()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=steps + WARMUP_BATCHES + 1,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[throughput],
    )
    trainer.fit(TokenizerModule(**model_args), datamodule=TokenizerDataModule(**data_args))
    return throughput.images_per_s


def bench_loader(config: dict, shards: str, batches: int) -> float:
    data = TokenizerDataModule(**{**config["data"], "train_shards": shards, "val_shards": shards})
    loader = iter(data.train_dataloader())
    for _ in range(WARMUP_BATCHES):
        next(loader)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += batch_images(next(loader))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="exported tokenizer folder")
    parser.add_argument("--config", required=True, help="the YAML config the tokenizer was trained with")
    parser.add_argument("--shards", required=True, help="image shards to read")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--loader-batches", type=int, default=100, help="timed loader batches")
    parser.add_argument("--precisions", nargs="+", default=None, metavar="PRECISION",
                        help="Lightning precisions to time training in (default: the config's, else the hardware's)")
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    model = VQTokenizer.from_pretrained(args.tokenizer, low_cpu_mem_usage=False).eval()
    images = images_from_shards(args.shards, 32, model.image_size)
    results = bench_inference(model, images)
    precisions = args.precisions or [config["trainer"].get("precision") or training_precision("cpu")[0]]
    for precision in precisions:
        results[f"training images/s ({precision})"] = bench_training(config, args.shards, args.train_steps, precision)
    results["shard loader images/s"] = bench_loader(config, args.shards, args.loader_batches)
    ratio = results["shard loader images/s"] / max(v for k, v in results.items() if k.startswith("training"))

    print(f"tokenizer {args.tokenizer}: {model.image_size}px -> {model.grid_size} codes, "
          f"torch threads {torch.get_num_threads()}")
    for name, value in results.items():
        print(f"  {name:<36} {value:10.1f}")
    verdict = "ok" if ratio >= 5 else "TOO SLOW: data would starve the model"
    print(f"  {'loader / fastest training ratio':<36} {ratio:10.1f}x  ({verdict}, needs >= 5x)")


if __name__ == "__main__":
    main()
