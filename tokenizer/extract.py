"""``unitok tokenize``: pre-extract image codes into code shards for LM training.

Each output sample has ``codes.npy`` (int16 when the codebook fits, else int32; shape ``(h, w)``,
or ``(h, w, Q)`` for a residual quantizer), the ``txt`` caption copied as is and the ``json``
metadata copied with ``tokenizer`` (name of the tokenizer folder), ``grid_size`` and
``codebook_size`` added, so the LM can check it reads codes of the tokenizer it expects.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (unitok tokenizer export)")
    parser.add_argument("--shards", required=True, help="image shards: folder, glob or brace pattern")
    parser.add_argument("--out", required=True, help="output folder for the code shards")
    parser.add_argument("--prefix", help="shard file prefix (default: the output folder's name)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per encoder batch")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per output shard")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from tokenizer.model import VQTokenizer
    from unitok.data.shards import shard_urls

    tokenizer_dir = Path(args.tokenizer)
    if not (tokenizer_dir / "config.json").is_file():
        raise UserError(f"{tokenizer_dir} is not a tokenizer folder (no config.json); make one with 'unitok tokenizer export'")
    try:
        shard_urls(args.shards)
    except FileNotFoundError as error:
        raise UserError(str(error)) from None
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = VQTokenizer.from_pretrained(tokenizer_dir, low_cpu_mem_usage=False).eval()  # no accelerate needed
    start = time.perf_counter()
    summary = tokenize_shards(model, args.shards, args.out, prefix=args.prefix or Path(args.out).name,
                              name=tokenizer_dir.resolve().name, batch_size=args.batch_size,
                              shard_size=args.shard_size)
    elapsed = time.perf_counter() - start
    print(f"tokenized {summary['written']} images into {summary['shards']} shards in {args.out} "
          f"in {elapsed:.1f} s ({summary['written'] / max(elapsed, 1e-9):.0f} images/s); "
          f"skipped {summary['skipped']} corrupt members")
    return 0 if summary["written"] else 1


def tokenize_shards(model, source: str, out_dir: str, prefix: str, name: str,
                    batch_size: int = 256, shard_size: int = 5000) -> dict[str, int]:
    """Encode every image of ``source`` with ``model`` and write code shards to ``out_dir``."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from tokenizer.data import ImageTransform
    from unitok.data.shards import ShardWriter, SkipCounter, read_shards

    skipped = SkipCounter("shard member")
    transform = ImageTransform(model.image_size, random_crop=False)
    dataset = read_shards(source, training=False, skip_counter=skipped,
                          transform=lambda sample: (sample, transform(sample)))
    dtype = np.int16 if model.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32
    extra = {"tokenizer": name, "grid_size": list(model.grid_size), "codebook_size": model.codebook_size}
    pending: list[tuple[dict, torch.Tensor]] = []

    def flush(writer: ShardWriter) -> None:
        with torch.inference_mode():
            codes = model.encode(torch.stack([image for _, image in pending])).cpu().numpy()
        for (sample, _), grid in zip(pending, codes, strict=True):
            member = {"__key__": sample["key"], "codes.npy": _npy_bytes(grid.astype(dtype)),
                      "json": json.dumps({**sample["meta"], **extra})}
            if "caption" in sample:
                member["txt"] = sample["caption"]
            writer.write(member)
        pending.clear()

    with ShardWriter(out_dir, prefix=prefix, max_count=shard_size) as writer, \
            tqdm(desc="tokenize", unit="img") as progress:
        for item in dataset:
            pending.append(item)
            if len(pending) == batch_size:
                flush(writer)
                progress.update(batch_size)
        if pending:
            progress.update(len(pending))
            flush(writer)
    return {"written": writer.total, "shards": len(writer.paths), "skipped": skipped.count}


def _npy_bytes(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
