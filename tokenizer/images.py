"""PIL <-> tensor conventions of the tokenizer: RGB, float32, ``[B, 3, S, S]``, values in [-1, 1].

Resizing happens in PIL on purpose: PIL's filters widen their support when shrinking, so a
downscale is antialiased; ``torch.nn.functional.interpolate`` without ``antialias=True`` aliases,
which a tokenizer trained on clean images then reproduces as artefacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from unitok.data.images import center_square, to_rgb


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """The central square of ``image`` at ``size`` px (Lanczos, antialiased), in RGB as
    ``unitok.data.images.to_rgb`` makes it (transparency on white, 16-bit scaled)."""
    return center_square(to_rgb(image), size, resample=Image.Resampling.LANCZOS)


def array_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` or ``[B, H, W, 3]`` -> float32 ``[(B,) 3, H, W]`` in [-1, 1]."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    tensor = torch.from_numpy(np.array(pixels, copy=True)).float().div(127.5).sub(1.0)  # PIL arrays are read-only
    return rearrange(tensor, "... h w c -> ... c h w")


def pil_to_tensor(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """PIL images of any size and mode -> ``[B, 3, image_size, image_size]`` in [-1, 1].

    Pass ``tokenizer.image_size`` as ``image_size``: the tokenizer's config is the one place for it.
    """
    if not images:
        raise ValueError("pil_to_tensor needs at least one image")
    return torch.stack([array_to_tensor(np.asarray(square_resize(image, image_size))) for image in images])


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] -> RGB PIL images (values outside are clipped)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] images, got shape {tuple(images.shape)}")
    pixels = images.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(array) for array in rearrange(pixels, "b c h w -> b h w c").numpy()]
