"""Choosing the next token from logits: temperature, top-k, top-p, and per-row random streams.

Every row owns its uniforms and tokens are drawn by inverting the CDF in id order, so the same
seeds give the same images however rows are batched (``docs/sampling.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from generation.settings import SamplingOptions


def uniform_streams(
    generators: torch.Generator | Sequence[torch.Generator] | None,
    rows: int,
    length: int,
    device: torch.device | str,
) -> torch.Tensor:
    """``[rows, length]`` uniforms in [0, 1): row ``i`` is drawn from ``generators[i]``.

    A single generator (or None: torch's global one) serves the rows in order, so results are
    reproducible for that batch but depend on the row's place in it; pass one generator per row
    for batch-independent results. Uniforms are drawn on the generator's device and moved, so a
    CPU generator gives the same stream whatever device the model runs on.
    """
    if generators is None or isinstance(generators, torch.Generator):
        generator = generators
        draws = [torch.rand(length, generator=generator, device=_device_of(generator)) for _ in range(rows)]
    else:
        generators = list(generators)
        if len(generators) != rows:
            raise ValueError(f"got {len(generators)} generators for {rows} rows: pass one per image, or a single one")
        draws = [torch.rand(length, generator=g, device=g.device) for g in generators]
    return torch.stack([d.to(device) for d in draws]) if draws else torch.empty(0, length, device=device)


def _device_of(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def choose_tokens(logits: torch.Tensor, uniforms: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Pick one index per row of ``logits [rows, n]`` using that row's uniform ``uniforms [rows]``."""
    if options.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / options.temperature
    if options.top_k:
        kth_largest = logits.topk(min(options.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if options.top_p is not None and options.top_p < 1.0:
        probs = _nucleus(probs, options.top_p)
    cdf = probs.cumsum(dim=-1)
    # right=True finds the first id whose cumulative mass exceeds u * total, which is never an id
    # of probability 0 (its cdf equals its predecessor's); u < 1 keeps the index in range.
    picks = torch.searchsorted(cdf, (uniforms.unsqueeze(-1) * cdf[:, -1:]).contiguous(), right=True)
    return picks.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest most-likely set whose mass reaches ``top_p``."""
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    kept = sorted_probs.masked_fill(mass_before >= top_p, math.inf)
    smallest_kept = kept.min(dim=-1, keepdim=True).values
    return probs.masked_fill(probs < smallest_kept, 0.0)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Classifier-free guidance on logits: ``cond + (scale - 1) * (cond - uncond)``.

    Written around ``cond`` (not the usual ``uncond + scale * (cond - uncond)``) so scale 1 gives
    the conditional logits exactly. Equal to guiding log-probabilities (transformers' way): the
    two differ by a per-row constant, which softmax removes.
    """
    if isinstance(scale, torch.Tensor):
        scale = scale.to(cond.dtype).unsqueeze(-1)
    return cond + (scale - 1.0) * (cond - uncond)
