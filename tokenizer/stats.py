"""Statistics of visual tokens: how a tokenizer's codes are used, measured as one measures a
language's words (the "Analyzing the Language of Visual Tokens" line of work, Chan et al. 2024).

``collect_statistics`` streams image shards (encoded here) or code shards (``unitok tokenize``)
into a ``CodeStatistics``; ``write_report`` writes ``stats.json`` and the plots that ``unitok
tokenizer stats`` promises. Memory stays bounded by the codebook, not by the data: unigram counts
are ``K`` numbers, and the pair and triple counts (a code with its left / upper neighbour) are kept
sparse, one entry per pair that occurs, so a 16,384-code book never needs a ``K x K`` array (2 GB).

Every entropy here is a *plug-in* estimate: the entropy of the empirical distribution. It is
biased low, by about ``(m - 1) / (2 N ln 2)`` bits for ``m`` occupied bins and ``N`` samples
(Miller 1955), and the bias grows with the number of contexts a conditional entropy splits the
samples into: when most (context, code) pairs are seen once, ``H(code | context)`` tends to 0 and
the mutual information to ``H(code)`` whatever the tokenizer does. So each figure comes with its
number of samples and of distinct pairs; trust a conditional entropy only where the samples far
outnumber the distinct pairs.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from tokenizer.data import ImageTransform
from tokenizer.images import array_to_tensor
from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_file
from unitok.data.shards import SkipCounter, read_shards
from unitok.errors import UserError

ATLAS_CODES = 64  # the most frequent codes shown in the atlas, 8 to a row
NEIGHBOURS = ("left", "up", "left_and_up")


class SparseCounts:
    """Counts of non-negative integer ids, kept as sorted distinct ids with their counts.

    Ids arrive in batches and are merged every ``merge_every`` ids, so memory is the number of
    distinct ids seen plus one buffer, however many ids are counted.
    """

    def __init__(self, merge_every: int = 1 << 20):
        self.merge_every = merge_every
        self._ids = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, ids: np.ndarray) -> None:
        self._pending.append(np.asarray(ids, dtype=np.int64).ravel())
        self._pending_size += self._pending[-1].size
        if self._pending_size >= self.merge_every:
            self._merge()

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct ids, their counts)."""
        self._merge()
        return self._ids, self._counts

    def _merge(self) -> None:
        if not self._pending:
            return
        new = np.concatenate(self._pending)
        ids = np.concatenate([self._ids, new])
        weights = np.concatenate([self._counts, np.ones(new.size, dtype=np.int64)])
        self._ids, self._counts = grouped_sum(ids, weights)
        self._pending, self._pending_size = [], 0


def grouped_sum(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, the sum of ``weights`` over each key)."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros(distinct.size, dtype=np.int64)
    np.add.at(sums, inverse, weights)
    return distinct, sums


def entropy_bits(counts: np.ndarray) -> float:
    """Plug-in entropy, in bits, of the distribution that ``counts`` are samples of."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def zipf_fit(counts: np.ndarray) -> dict[str, Any]:
    """Zipf's law ``count ~ rank^-s``: least squares of log10(count) on log10(rank) over every
    rank with a count above zero. ``exponent`` is ``s`` (1 for the words of a natural language),
    ``ranks`` the range fitted; None when fewer than two codes occur."""
    counts = np.asarray(counts, dtype=np.float64)
    ordered = np.sort(counts[counts > 0])[::-1]
    if ordered.size < 2:
        return {"exponent": None, "intercept": None, "ranks": [1, int(ordered.size)], "r_squared": None}
    x, y = np.log10(np.arange(1, ordered.size + 1)), np.log10(ordered)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    spread = ((y - y.mean()) ** 2).sum()
    r_squared = 1.0 - (residual ** 2).sum() / spread if spread > 0 else 1.0
    return {"exponent": float(-slope), "intercept": float(intercept), "ranks": [1, int(ordered.size)],
            "r_squared": float(r_squared)}


def context_statistics(joint: SparseCounts, codebook_size: int) -> dict[str, Any]:
    """What a context (a neighbour, or two) tells about a code, from counts of ids
    ``context * K + code``: ``H(code | context) = H(context, code) - H(context)`` and
    ``I(code; context) = H(code) + H(context) - H(context, code)``, in bits, over the grid
    positions that have that context (``code_entropy_bits`` is ``H(code)`` over those positions).
    ``conditional_entropy_bias_bits`` is the first-order (Miller-Madow) estimate of how much the
    plug-in ``H(code | context)`` falls short: ``(distinct pairs - distinct contexts) / (2 N ln 2)``."""
    ids, counts = joint.items()
    contexts, codes = ids // codebook_size, ids % codebook_size
    distinct_contexts = int(np.unique(contexts).size)
    samples = int(counts.sum())
    h_joint = entropy_bits(counts)
    h_context = entropy_bits(grouped_sum(contexts, counts)[1])
    h_code = entropy_bits(np.bincount(codes, weights=counts, minlength=codebook_size))
    # The plug-in values are exact functionals of the empirical distribution, so both are >= 0;
    # max() only removes rounding noise such as -1e-16.
    return {
        "conditional_entropy_bits": max(0.0, h_joint - h_context),
        "mutual_information_bits": max(0.0, h_code + h_context - h_joint),
        "conditional_entropy_bias_bits": (ids.size - distinct_contexts) / (2 * max(samples, 1) * math.log(2)),
        "code_entropy_bits": h_code,
        "context_entropy_bits": h_context,
        "samples": samples,
        "distinct_contexts": distinct_contexts,
        "distinct_pairs": int(ids.size),
    }


@dataclass
class CodeStatistics:
    """Counts over grids of codes ``[h, w]``: each code, each (grid cell, code), and each code
    with its left neighbour, its upper neighbour, and both."""

    codebook_size: int
    grid_size: tuple[int, int]
    images: int = 0
    source: str | None = None  # "code shards" or "image shards", from the first sample read
    skipped: int = 0
    unigram: np.ndarray = field(init=False)
    cells: SparseCounts = field(init=False, default_factory=SparseCounts)
    pairs: dict[str, SparseCounts] = field(init=False)

    def __post_init__(self) -> None:
        if self.codebook_size ** 3 >= 2 ** 63:
            raise ValueError(f"a codebook of {self.codebook_size} codes is too large for int64 code triples")
        self.unigram = np.zeros(self.codebook_size, dtype=np.int64)
        self.pairs = {name: SparseCounts() for name in NEIGHBOURS}

    def add(self, grids: np.ndarray) -> None:
        """Count a batch of code grids ``[B, h, w]``."""
        grids = np.asarray(grids, dtype=np.int64)
        if grids.ndim != 3 or tuple(grids.shape[1:]) != tuple(self.grid_size):
            raise ValueError(f"expected code grids [B, {self.grid_size[0]}, {self.grid_size[1]}], got {grids.shape}")
        if grids.size and (grids.min() < 0 or grids.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{grids.min()}, {grids.max()}]")
        k = self.codebook_size
        self.images += grids.shape[0]
        self.unigram += np.bincount(grids.ravel(), minlength=k)
        cell = np.arange(grids.shape[1] * grids.shape[2]).reshape(grids.shape[1:])
        self.cells.add(cell * k + grids)
        left, up, code = grids[:, 1:, :-1], grids[:, :-1, 1:], grids[:, 1:, 1:]
        self.pairs["left"].add(grids[:, :, :-1] * k + grids[:, :, 1:])
        self.pairs["up"].add(grids[:, :-1, :] * k + grids[:, 1:, :])
        self.pairs["left_and_up"].add((left * k + up) * k + code)

    def position_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(entropy in bits of the codes at each grid cell, distinct codes at each cell), ``[h, w]``."""
        ids, counts = self.cells.items()
        cells = ids // self.codebook_size
        n_cells = self.grid_size[0] * self.grid_size[1]
        totals = np.bincount(cells, weights=counts, minlength=n_cells)
        p = counts / totals[cells]
        entropy = np.bincount(cells, weights=-p * np.log2(p), minlength=n_cells)
        distinct = np.bincount(cells, minlength=n_cells)
        return entropy.reshape(self.grid_size), distinct.reshape(self.grid_size)

    def top_codes(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` most frequent codes (ties by code id), with their counts and shares."""
        order = np.lexsort((np.arange(self.codebook_size), -self.unigram))[:n]
        total = max(int(self.unigram.sum()), 1)
        return [{"code": int(c), "count": int(self.unigram[c]), "share": int(self.unigram[c]) / total}
                for c in order if self.unigram[c] > 0]

    def summary(self) -> dict[str, Any]:
        """Every figure ``stats.json`` holds (the plots draw from the same)."""
        k = self.codebook_size
        entropy = entropy_bits(self.unigram)
        used = int((self.unigram > 0).sum())
        cell_entropy, cell_distinct = self.position_maps()
        return {
            "source": self.source,
            "images": self.images,
            "codes": int(self.unigram.sum()),
            "skipped_members": self.skipped,
            "codebook_size": k,
            "grid_size": list(self.grid_size),
            "unigram": {"entropy_bits": entropy, "log2_codebook_size": math.log2(k),
                        "perplexity": 2.0 ** entropy, "codes_used": used, "usage": used / k},
            "zipf": zipf_fit(self.unigram),
            "neighbours": {name: context_statistics(self.pairs[name], k) for name in NEIGHBOURS},
            "positions": {"entropy_bits": cell_entropy.round(4).tolist(), "distinct_codes": cell_distinct.tolist()},
            "top_codes": self.top_codes(ATLAS_CODES),
        }


# ----------------------------------------------------------------------------------------------
# Reading shards


def collect_statistics(model: VQTokenizer, source: str | list[str], *, view: str | None = None,
                       batch_size: int = 64, max_images: int | None = None, progress: bool = True) -> CodeStatistics:
    """Count the codes of every sample of ``source`` (the first ``max_images``): read from code
    shards, or encoded with ``model`` from image shards (batched, in inference mode). Which of the
    two the shards are is decided by the first sample. ``view`` names an extra image of each
    sample (``clean`` in Shapes shards) instead of the main one."""
    statistics = CodeStatistics(model.codebook_size, model.grid_size)
    skipped = SkipCounter("shard member")
    transform = ImageTransform(model.image_size, random_crop=False)
    pending: list[np.ndarray] = []  # grids from code shards, or pixels awaiting the encoder

    def flush() -> None:
        if not pending:
            return
        if statistics.source == "image shards":
            with torch.inference_mode():
                images = torch.stack([array_to_tensor(transform.fit(pixels)) for pixels in pending])
                statistics.add(model.encode(images).cpu().numpy())
        else:
            statistics.add(np.stack(pending))
        progress_bar.update(len(pending))
        pending.clear()

    samples = itertools.islice(read_shards(source, training=False, skip_counter=skipped), max_images)
    with tqdm(desc="stats", unit="img", file=sys.stderr, disable=not progress) as progress_bar:
        for sample in samples:
            kind = "code shards" if "codes" in sample else "image shards"
            if statistics.source is None:
                statistics.source = kind
            elif kind != statistics.source:
                raise UserError(f"sample {sample['key']!r} is from {kind}, the samples before it from "
                                f"{statistics.source}; pass one kind of shards")
            pending.append(_codes(sample, model, view) if kind == "code shards" else _pixels(sample, view))
            if len(pending) == batch_size:
                flush()
        flush()
    statistics.skipped = skipped.count
    return statistics


def _codes(sample: dict[str, Any], model: VQTokenizer, view: str | None) -> np.ndarray:
    """A code shard's grid, checked against the tokenizer the statistics are for."""
    key, meta = sample["key"], sample["meta"]
    codes = sample["codes"] if view is None else sample["named_codes"].get(view)
    if codes is None:
        raise UserError(f"sample {key!r} has no {view!r} view (it has: {', '.join(sorted(sample['named_codes'])) or 'none'})")
    made_with = meta.get("codebook_size")
    if made_with is not None and made_with != model.codebook_size:
        raise UserError(f"the code shards were made by a tokenizer with {made_with} codes (sample {key!r}), but "
                        f"--tokenizer has {model.codebook_size}; pass the tokenizer that made them")
    if tuple(codes.shape) != tuple(model.grid_size):
        grid = "x".join(map(str, model.grid_size))
        raise UserError(f"the code shards hold grids of shape {tuple(codes.shape)} (sample {key!r}), but --tokenizer "
                        f"makes {grid} grids; pass the tokenizer that made them")
    if codes.min() < 0 or codes.max() >= model.codebook_size:
        raise UserError(f"sample {key!r} has codes outside [0, {model.codebook_size}) of --tokenizer; "
                        "pass the tokenizer that made them")
    return codes


def _pixels(sample: dict[str, Any], view: str | None) -> np.ndarray:
    pixels = sample["image"] if view is None else sample["images"].get(view)
    if pixels is None:
        raise UserError(f"sample {sample['key']!r} has no {view!r} image (it has: "
                        f"{', '.join(sorted(sample['images'])) or 'only the main image'})")
    return pixels


# ----------------------------------------------------------------------------------------------
# The report: stats.json and plots (plain matplotlib Figures, no pyplot: no global backend change)


def write_report(statistics: CodeStatistics, model: VQTokenizer, out_dir: str | Path,
                 about: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``stats.json`` and the plots to ``out_dir``, each file atomically; returns the
    summary written (``about``, e.g. the tokenizer and shards, first)."""
    out = Path(out_dir)
    summary = {**(about or {}), **statistics.summary()}
    plots = {
        "rank_frequency": _rank_frequency_plot(statistics.unigram, summary["zipf"]),
        "entropy": _entropy_plot(summary),
        "positions": _position_plot(*statistics.position_maps()),
        "atlas": _atlas(model, summary["top_codes"]),
    }
    summary["plots"] = {name: f"{name}.png" for name in plots}
    summary["atlas_tiles"] = ("each of the most frequent codes decoded from a grid filled with it; the tile is the centre "
                        "cell's patch")
    for name, figure in plots.items():
        with atomic_file(out / f"{name}.png") as temporary:
            figure.savefig(temporary, dpi=100)
    with atomic_file(out / "stats.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _rank_frequency_plot(unigram: np.ndarray, zipf: dict[str, Any]) -> Figure:
    ordered = np.sort(unigram[unigram > 0])[::-1]
    ranks = np.arange(1, ordered.size + 1)
    figure = Figure(figsize=(5, 4))
    axis = figure.subplots()
    axis.loglog(ranks, ordered, ".", markersize=3, label="codes")
    if zipf["exponent"] is not None:
        axis.loglog(ranks, 10 ** zipf["intercept"] * ranks ** -zipf["exponent"], "-",
                    label=f"fit: s = {zipf['exponent']:.2f} (ranks 1-{ranks[-1]})")
        axis.loglog(ranks, ordered[0] / ranks, ":", color="gray", label="Zipf's law, s = 1")
    axis.set_xlabel("rank")
    axis.set_ylabel("count")
    axis.set_title("rank-frequency")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _entropy_plot(summary: dict[str, Any]) -> Figure:
    neighbours = summary["neighbours"]
    bars = {
        "log2 K": summary["unigram"]["log2_codebook_size"],
        "H(code)": summary["unigram"]["entropy_bits"],
        "H(code|left)": neighbours["left"]["conditional_entropy_bits"],
        "H(code|up)": neighbours["up"]["conditional_entropy_bits"],
        "H(code|left,up)": neighbours["left_and_up"]["conditional_entropy_bits"],
    }
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    drawn = axis.bar(list(bars), list(bars.values()), color=["gray"] + ["tab:blue"] * 4)
    axis.bar_label(drawn, fmt="%.2f", fontsize=8)
    axis.set_ylabel("bits")
    axis.set_title(f"entropy per code ({summary['codes']} codes, plug-in)")
    axis.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    return figure


def _position_plot(entropy: np.ndarray, distinct: np.ndarray) -> Figure:
    figure = Figure(figsize=(9, 4))
    for axis, values, title in zip(figure.subplots(1, 2), (entropy, distinct),
                                   ("entropy per cell (bits)", "distinct codes per cell"), strict=True):
        image = axis.imshow(values, cmap="viridis")
        figure.colorbar(image, ax=axis, shrink=0.8)
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
        if values.size <= 100:  # numbers stay readable on small grids
            for (row, column), value in np.ndenumerate(values):
                axis.text(column, row, f"{value:.1f}" if values.dtype.kind == "f" else str(value),
                          ha="center", va="center", fontsize=7, color="white")
    figure.tight_layout()
    return figure


def code_patches(model: VQTokenizer, codes: list[int], batch_size: int = 16) -> np.ndarray:
    """What each code decodes to, ``[N, p, p, 3]`` uint8: a grid filled with the code, decoded,
    and its centre cell's ``p x p`` patch kept. Why filled: the decoder is convolutional, so a
    code's pixels depend on its neighbours; with every neighbour the same code, nothing else
    shows through, and the centre cell is furthest from the zero padding at the image border."""
    h, w = model.grid_size
    patch = model.image_size // h
    top, left = (h // 2) * patch, (w // 2) * patch
    tiles = []
    with torch.inference_mode():
        for start in range(0, len(codes), batch_size):
            chunk = torch.tensor(codes[start:start + batch_size], dtype=torch.long)
            images = model.decode(chunk[:, None, None].expand(-1, h, w))
            tiles.append(images[:, :, top:top + patch, left:left + patch])
    if not tiles:
        return np.zeros((0, patch, patch, 3), dtype=np.uint8)
    pixels = torch.cat(tiles).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _atlas(model: VQTokenizer, top: list[dict[str, Any]]) -> Figure:
    patches = code_patches(model, [entry["code"] for entry in top])
    columns = 8
    rows = max(1, math.ceil(len(top) / columns))
    figure = Figure(figsize=(columns * 1.0, rows * 1.15 + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes:
        axis.axis("off")
    for axis, entry, pixels in zip(axes, top, patches, strict=False):
        axis.axis("on")  # a frame, so a white patch shows on the white page
        axis.set_xticks([])
        axis.set_yticks([])
        axis.imshow(pixels, interpolation="nearest")
        axis.set_title(f"{entry['code']}  {100 * entry['share']:.1f}%", fontsize=7)
    figure.suptitle(f"the {len(top)} most frequent codes, decoded", fontsize=9)
    figure.tight_layout()
    return figure
