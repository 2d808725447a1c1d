"""WebDataset shards: the one writer and the one reader every stage uses.

Image shards hold ``png``/``jpg``, ``txt`` (the reference caption) and ``json`` (metadata, e.g.
``paraphrases``); code shards hold ``codes.npy`` instead of the image. Training streams are
DDP-safe (resampled, fixed epoch length); validation gives every rank the whole set.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds

from unitok.atomic import atomic_file
from unitok.data.images import load_image
from unitok.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def shard_urls(source: str | os.PathLike | list[str]) -> list[str]:
    """Expand shard sources into shard paths, each shard once, in order.

    A source is a folder of ``.tar`` shards, a glob, a file or URL, a brace pattern whose
    alternatives may each be any of these (``train-{000000..000009}.tar``, ``{data/a,data/b}/*.tar``,
    ``{data/a,data/b/*.tar}``), or a list of sources. Raises UserError naming what matched nothing.
    """
    if isinstance(source, (list, tuple)):
        return list(dict.fromkeys(url for item in source for url in shard_urls(item)))
    text = str(source)
    try:  # a path that exists is taken as it is, even with braces in its name
        alternatives = [text] if Path(text).exists() else list(braceexpand.braceexpand(text))
    except braceexpand.UnbalancedBracesError:
        raise UserError(f"unbalanced braces in the shard pattern {text!r}") from None
    urls = []
    for alternative in alternatives:
        found = _shards_at(alternative)
        if not found:
            where = f"{alternative!r}" + (f" (from {text!r})" if alternative != text else "")
            raise UserError(f"no shards found at {where}; pass a folder of .tar shards, a glob or a brace pattern")
        urls += found
    return list(dict.fromkeys(urls))


def _shards_at(alternative: str) -> list[str]:
    """The shards one source names: a folder's, a glob's (folders it matches included), or the
    file or URL itself; empty when it names nothing."""
    path = Path(alternative)
    if path.is_dir():
        # Hidden names are partial shards of an interrupted writer (``unitok.atomic``), not data.
        return sorted(str(p) for p in path.glob("*.tar") if not p.name.startswith("."))
    if "://" in alternative or path.is_file():
        return [alternative]
    if any(ch in alternative for ch in "*?["):
        return [url for match in sorted(glob.glob(alternative)) for url in _shards_at(match)]
    return []


class ShardWriter:
    """Writes samples into numbered tar shards ``{prefix}-{index:06d}.tar`` in ``out_dir``.

    Members are encoded by webdataset from their extension (a PIL image under ``png``, an array
    under ``codes.npy``, a dict under ``json``; bytes are stored as they are). Each shard is
    written atomically (``unitok.atomic.atomic_file``), so an interrupted run never leaves a
    truncated shard that looks finished; the shards finished before it are kept.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str, max_count: int = 2000):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count = prefix, max_count
        self.count_in_shard, self.total = 0, 0
        self._shard: contextlib.ExitStack | None = None  # the open shard's writer and atomic file
        self._writer: wds.TarWriter | None = None
        self._final: Path | None = None
        self.paths: list[Path] = []

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None or self.count_in_shard >= self.max_count:
            self._finish_shard()
            self._open_shard()
        self._writer.write(sample)
        self.count_in_shard += 1
        self.total += 1

    def _open_shard(self) -> None:
        self._final = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
        self._shard = contextlib.ExitStack()
        self._writer = wds.TarWriter(str(self._shard.enter_context(atomic_file(self._final))))
        self._shard.callback(self._writer.close)
        self.count_in_shard = 0

    def _finish_shard(self, error: BaseException | None = None) -> None:
        if self._shard is None:
            return
        shard, self._shard, self._writer = self._shard, None, None
        if error is None:
            shard.close()  # closes the tar, then renames it into place
            self.paths.append(self._final)
        else:  # closes the tar and removes it; the shards finished before it stay
            shard.__exit__(type(error), error, error.__traceback__)

    def close(self) -> None:
        self._finish_shard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish_shard(exc)


class SkipCounter:
    """A webdataset error handler that skips bad members, counts them and logs the first few."""

    def __init__(self, what: str = "sample", log_first: int = 5):
        self.what, self.log_first, self.count = what, log_first, 0

    def __call__(self, error: Exception) -> bool:
        self.count += 1
        if self.count <= self.log_first:
            log.warning("skipping corrupt %s (%d so far): %s", self.what, self.count, error)
        return True  # continue with the next sample


def _decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn raw tar members into ``image`` (uint8 HWC RGB), ``codes``, ``caption`` and ``meta``,
    and named extra views: member ``clean.png`` -> ``images["clean"]``, ``clean.codes.npy`` ->
    ``named_codes["clean"]``.

    Only these members are decoded, on purpose: webdataset's default decoders would also unpickle
    ``pyd``/``pth`` members, and shards may come from anyone.
    """
    sample: dict[str, Any] = {"key": raw["__key__"], "images": {}, "named_codes": {}}
    for member, data in raw.items():
        name, _, ext = member.rpartition(".")
        if ext in IMAGE_EXTENSIONS:
            pixels = np.asarray(load_image(data).image)
            if name:
                sample["images"][name] = pixels
            else:
                sample["image"] = pixels
        elif member == "codes.npy":
            sample["codes"] = np.load(io.BytesIO(data), allow_pickle=False)
        elif member.endswith(".codes.npy"):
            sample["named_codes"][member.removesuffix(".codes.npy")] = np.load(io.BytesIO(data), allow_pickle=False)
    if "txt" in raw:
        sample["caption"] = raw["txt"].decode("utf-8")
    sample["meta"] = json.loads(raw["json"].decode("utf-8")) if "json" in raw else {}
    if "image" not in sample and "codes" not in sample:
        raise ValueError(f"sample {raw['__key__']!r} has neither an image nor codes.npy member")
    return sample


def has_caption(sample: dict[str, Any]) -> bool:
    """Whether a decoded sample has a caption. An image without one (``unitok data folder`` keeps
    them) still trains the image tokenizer but gives the LM no text to learn from."""
    return bool(sample.get("caption", "").strip())


def read_shards(
    source: str | os.PathLike | list[str],
    *,
    training: bool,
    samples_per_epoch: int | None = None,
    shuffle_buffer: int = 1000,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    skip_counter: SkipCounter | None = None,
    seed: int = 0,
) -> wds.WebDataset:
    """The shared shard reader for tokenizer and LM training.

    training=True: an endless resampled stream (split across DDP ranks and loader workers) cut
    into epochs of ``samples_per_epoch`` samples per rank and worker-set, shuffled in a buffer.
    training=False: one full, ordered pass over every shard on every rank.
    ``keep`` leaves out the decoded samples it returns False for (on purpose, so not counted);
    ``transform`` maps each decoded sample (dict with ``image``/``codes``/``caption``/``meta``)
    to what the model consumes; failures there are skipped and counted like corrupt members.
    """
    urls = shard_urls(source)
    handler = skip_counter or SkipCounter()
    if training:
        dataset = wds.WebDataset(
            urls, resampled=True, nodesplitter=wds.split_by_node, shardshuffle=False,
            handler=handler, seed=seed, empty_check=False,
        )
        dataset = dataset.shuffle(shuffle_buffer, seed=seed) if shuffle_buffer > 1 else dataset
    else:
        dataset = wds.WebDataset(
            urls, resampled=False, nodesplitter=_every_node,
            shardshuffle=False, handler=handler, empty_check=False,
        )
    dataset = dataset.map(_decode_sample, handler=handler)
    if keep is not None:
        dataset = dataset.select(keep)
    if transform is not None:
        dataset = dataset.map(transform, handler=handler)
    if training:
        if not samples_per_epoch:
            raise ValueError("training streams are endless: pass samples_per_epoch")
        dataset = dataset.with_epoch(samples_per_epoch)
    return dataset


def _every_node(urls: list[str]) -> list[str]:
    """Validation: every rank reads every shard, so metrics are over the whole set."""
    return urls


def iterate_samples(source: str | os.PathLike | list[str]) -> Iterator[dict[str, Any]]:
    """One ordered pass over decoded samples in this process (for tools and evaluation)."""
    return iter(read_shards(source, training=False))
