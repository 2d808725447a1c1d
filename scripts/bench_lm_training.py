"""Training throughput of the unified LM in each precision, with and without sequence packing.

    python scripts/bench_lm_training.py --config configs/lm/shapes-tiny.yaml \
        --shards data/shapes-codes/train --image-tokenizer runs/shapes64/export \
        [--precisions 32-true bf16-mixed] [--pack-lengths 256 off] [--steps 30]

The real Lightning loop of the config (data loading included), the same initial weights and the
same batches of sequences for every setting, timed after the first batches. Prints real ids/s
(padding not counted), steps/s, rows per batch and the share of positions that are padding, one
line per setting. Packed (``data.pack_length``), sequences share rows; the losses are the same.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from unitok.lm.data import CodeShardDataModule
from unitok.lm.module import UnifiedLMModule
from unitok.precision import training_precision

WARMUP_BATCHES = 3


class Throughput(Callback):
    """Real ids, padded positions and steps over training batches after WARMUP_BATCHES."""

    def __init__(self):
        self.start, self.ids, self.positions, self.rows, self.steps = None, 0, 0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == WARMUP_BATCHES:
            self.start = time.perf_counter()
        elif batch_idx > WARMUP_BATCHES:
            real = batch["sequence"] >= 0
            self.ids += int(real.sum())
            self.positions += real.numel()
            self.rows += real.shape[0]
            self.steps += 1

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def bench(module: UnifiedLMModule, data_args: dict, steps: int, precision: str) -> Throughput:
    throughput = Throughput()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps + WARMUP_BATCHES + 1,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[throughput])
    trainer.fit(module, datamodule=CodeShardDataModule(**data_args))
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the LM's YAML config (model and data settings)")
    parser.add_argument("--shards", required=True, help="code shards to train on")
    parser.add_argument("--image-tokenizer", required=True, help="the exported image tokenizer of those codes")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setting")
    parser.add_argument("--precisions", nargs="+", default=None, metavar="PRECISION",
                        help="Lightning precisions (default: the one the hardware gets, unitok.precision)")
    parser.add_argument("--pack-lengths", nargs="+", default=["256", "off"], metavar="N|off",
                        help="data.pack_length settings to time: ids per packed row, or off (default: 256 off)")
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    model_args = {**config["model"], "image_tokenizer": args.image_tokenizer, "tokenizer_captions": args.shards,
                  "bpe_max_samples": 5000}
    start = UnifiedLMModule(**model_args)
    precisions = args.precisions or [training_precision("cpu")[0]]
    print(f"{args.config}: {sum(p.numel() for p in start.model.parameters()) / 1e6:.2f}M parameters, "
          f"batch {config['data']['batch_size']}, torch threads {torch.get_num_threads()}")
    data_args = {**config["data"], "train_shards": args.shards, "val_shards": None, "num_workers": 0}
    for precision in precisions:
        for packing in args.pack_lengths:
            pack_length = None if packing == "off" else int(packing)
            result = bench(copy.deepcopy(start), {**data_args, "pack_length": pack_length}, args.steps, precision)
            padding = 1 - result.ids / result.positions
            print(f"  {precision:>10} packing {packing:>4}: {result.ids / result.seconds:8.0f} ids/s  "
                  f"{result.steps / result.seconds:5.2f} steps/s  {result.rows / result.steps:5.1f} rows/batch  "
                  f"padding {padding:6.1%}", flush=True)


if __name__ == "__main__":
    main()
