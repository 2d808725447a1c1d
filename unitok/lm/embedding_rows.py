"""New embedding rows for tokens an LM has never seen (UniTok's specials and image codes).

HF's ``resize_token_embeddings(mean_resizing=True)`` makes all new rows nearly identical, so image
codes would start indistinguishable; a zero or tiny row is off the scale the network expects. We
draw each new row from a normal with the per-dimension mean and std of the existing text rows.
"""

from __future__ import annotations

import torch


def draw_new_rows(text_rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, dim]`` rows (in ``text_rows``' dtype) at the per-dimension scale of ``text_rows``."""
    text = text_rows.detach().float()
    noise = torch.randn(count, text.shape[1], generator=generator)
    return (text.mean(0) + text.std(0) * noise).to(text_rows.dtype)
