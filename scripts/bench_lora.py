"""LoRA vs full fine-tuning of a pretrained base: trainable parameters, peak memory, step time.

    OMP_NUM_THREADS=1 python scripts/bench_lora.py [--hidden 512] [--layers 8] [--text-vocab 32000] \
        [--batch 4] [--steps 8] [--rank 8]

Builds a random Llama "hub" folder on the spot in a temporary folder (a word-level tokenizer of
``--text-vocab`` words and an untied head, shaped like a small Llama) and random code shards (an
8x8 grid of 1,024 codes with Shapes captions), then runs each mode in its own process, since peak
RSS is per process: the real ``UnifiedLMModule`` and Lightning loop in fp32, the same seed and the
same batches. Peak memory is the process's peak RSS (``ru_maxrss``) less its RSS once everything
is imported; step time is the median of ``--steps`` steps after two warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from unitok.data import shapes
from unitok.data.shards import ShardWriter
from unitok.lm.data import CodeShardDataModule
from unitok.lm.module import UnifiedLMModule

CODEBOOK, GRID, WARMUP_STEPS = 1024, (8, 8), 2


def current_rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_base(folder: Path, text_vocab: int, hidden: int, layers: int) -> None:
    """A random Llama and a word-level tokenizer of ``text_vocab`` words (the caption words first)."""
    words = sorted({w for s in range(200) for w in shapes.canonical_caption(
        shapes.random_scene(np.random.default_rng(s))).split()})
    tokens = ["<unk>", "<s>", "</s>", *words]
    tokens += [f"w{i}" for i in range(text_vocab - len(tokens))]
    vocab = {token: i for i, token in enumerate(tokens)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_shards(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    with ShardWriter(folder, prefix="codes") as writer:
        for index in range(count):
            caption = shapes.canonical_caption(shapes.random_scene(rng))
            codes = rng.integers(0, CODEBOOK, GRID).astype(np.int16)
            writer.write({"__key__": f"{index:06d}", "codes.npy": codes, "txt": caption, "json": {}})


class StepTimes(Callback):
    def __init__(self):
        self.times, self.start = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)


def run_mode(work: Path, mode: str, batch: int, steps: int, rank: int) -> dict:
    """One mode in this process; returns its figures."""
    imported = current_rss_mb()
    lora = {"r": rank, "alpha": 2 * rank} if mode == "lora" else None
    torch.manual_seed(0)
    module = UnifiedLMModule(pretrained=str(work / "base"), codebook_size=CODEBOOK, grid=GRID, lora=lora,
                             learning_rate=1e-4, warmup_steps=1)
    loaded = peak_rss_mb()
    total = sum(p.numel() for name, p in module.model.named_parameters() if "unitok_new_rows" not in name)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    times = StepTimes()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=WARMUP_STEPS + steps,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[times])
    data = CodeShardDataModule(train_shards=str(work / "shards"), batch_size=batch, samples_per_epoch=batch * 100,
                               num_workers=0, shuffle_buffer=1, seed=0)
    trainer.fit(module, data)
    return {"mode": mode, "parameters": total, "trainable": trainable,
            "loaded_mb": loaded - imported, "peak_mb": peak_rss_mb() - imported, "step_s": statistics.median(times.times[WARMUP_STEPS:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--text-vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank, all linear layers)")
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # one mode, in a child
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.work, args.mode, args.batch, args.steps, args.rank)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_base(work / "base", args.text_vocab, args.hidden, args.layers)
        write_shards(work / "shards", 64)
        print(f"Llama base: hidden {args.hidden}, {args.layers} layers, {args.text_vocab:,} text tokens, untied head; "
              f"+ {CODEBOOK:,} image codes on a {GRID[0]}x{GRID[1]} grid; batch {args.batch}, fp32, "
              f"torch threads {torch.get_num_threads()}")
        print("| mode | trainable parameters | share | peak memory (RSS) | step time |")
        print("|---|---|---|---|---|")
        for mode in ("full", "lora"):
            child = subprocess.run([sys.executable, __file__, "--mode", mode, "--work", str(work),
                                    *(f"--{k}={v}" for k, v in (("batch", args.batch), ("steps", args.steps),
                                                                 ("rank", args.rank)))],
                                   capture_output=True, text=True, check=True)
            row = json.loads(child.stdout.strip().splitlines()[-1])
            name = "full fine-tuning" if mode == "full" else f"LoRA r={args.rank} + new rows"
            print(f"| {name} | {row['trainable'] / 1e6:.2f}M of {row['parameters'] / 1e6:.2f}M | "
                  f"{row['trainable'] / row['parameters']:.1%} | {row['peak_mb']:.0f} MB | {row['step_s']:.2f} s |")


if __name__ == "__main__":
    main()
