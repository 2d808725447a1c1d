"""Faithful renderings of a Shapes scene as files: other renderers the spec allows, and the file
formats users send (JPEG at any quality, transparent PNG, palette PNG, a little noise).

A rendering is a renderer (``shapes.Rendering``) and an encoding. ``faithful_file`` draws a random
one for training data; ``EVAL_VARIANTS`` names one change at a time for evaluation, each marked
held in or held out (``HELD_OUT``: a filter, a supersampling factor, a JPEG quality and a format no
training file uses).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from unitok.data import shapes

TRAIN_RENDERINGS = (shapes.Rendering(), shapes.Rendering(4, "lanczos"), shapes.Rendering(2, "bicubic"),
                    shapes.Rendering(4, "bicubic"), shapes.Rendering(6, "bicubic"), shapes.Rendering(4, "box", 0.5),
                    shapes.Rendering(4, "lanczos", 0.5))
TRAIN_JPEG_QUALITIES = tuple(q for q in range(50, 96, 5) if q != 60)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _transparent(image: Image.Image, background: str) -> Image.Image:
    """RGBA: a white background made transparent (black under it); others stay opaque."""
    rgb = np.asarray(image)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    if background == "white":
        white = (rgb == 255).all(axis=-1)
        rgb = np.where(white[..., None], 0, rgb).astype(np.uint8)
        alpha[white] = 0
    return Image.fromarray(np.dstack([rgb, alpha]))


def _noisy(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64) + rng.normal(0, sigma, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def faithful_file(scene: shapes.Scene, size: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """A random training rendering of ``scene`` as file bytes and the shard member's extension."""
    if rng.random() < 0.15:  # drawn at twice the size, then shrunk as a user would
        image = shapes.render_with(scene, 2 * size, TRAIN_RENDERINGS[int(rng.integers(len(TRAIN_RENDERINGS)))], rng)
        image = image.resize((size, size), [Image.Resampling.LANCZOS, Image.Resampling.BICUBIC,
                                            Image.Resampling.BOX][int(rng.integers(3))])
    else:
        image = shapes.render_with(scene, size, TRAIN_RENDERINGS[int(rng.integers(len(TRAIN_RENDERINGS)))], rng)
    draw = rng.random()
    if draw < 0.4:
        return encode(image, "PNG"), "png"
    if draw < 0.75:
        quality = int(TRAIN_JPEG_QUALITIES[int(rng.integers(len(TRAIN_JPEG_QUALITIES)))])
        return encode(image, "JPEG", quality=quality, subsampling=int(rng.choice([0, 2]))), "jpg"
    if draw < 0.85:
        return encode(_transparent(image, scene.background), "PNG"), "png"
    if draw < 0.9:
        return encode(image.quantize(256), "PNG"), "png"
    return encode(_noisy(image, rng, float(rng.uniform(1, 4))), "PNG"), "png"


def _variant(rendering: shapes.Rendering, fmt: str = "PNG", transform: Callable | None = None, **options):
    def make(scene: shapes.Scene, size: int, rng: np.random.Generator) -> bytes:
        image = shapes.render_with(scene, size, rendering, rng)
        if transform is not None:
            image = transform(image, scene, rng)
        return encode(image, fmt, **options)

    return make


def _from_double(scene: shapes.Scene, size: int, rng: np.random.Generator) -> bytes:
    return encode(shapes.render(scene, 2 * size).resize((size, size), Image.Resampling.LANCZOS), "PNG")


EVAL_VARIANTS: dict[str, Callable[[shapes.Scene, int, np.random.Generator], bytes]] = {
    "own renderer (box 4x), PNG": _variant(shapes.Rendering()),
    "Lanczos 4x": _variant(shapes.Rendering(4, "lanczos")),
    "bicubic 2x": _variant(shapes.Rendering(2, "bicubic")),
    "sub-pixel jitter 0.5 px": _variant(shapes.Rendering(4, "box", 0.5)),
    "128 px resized to 64 (Lanczos)": _from_double,
    "JPEG quality 80": _variant(shapes.Rendering(), "JPEG", quality=80),
    "JPEG quality 50": _variant(shapes.Rendering(), "JPEG", quality=50),
    "transparent PNG (RGBA)": _variant(shapes.Rendering(), transform=lambda im, s, rng: _transparent(im, s.background)),
    "palette PNG": _variant(shapes.Rendering(), transform=lambda im, s, rng: im.quantize(256)),
    "noise sigma 3": _variant(shapes.Rendering(), transform=lambda im, s, rng: _noisy(im, rng, 3.0)),
    "bilinear 4x": _variant(shapes.Rendering(4, "bilinear")),
    "Lanczos 8x + jitter": _variant(shapes.Rendering(8, "lanczos", 0.5)),
    "JPEG quality 60": _variant(shapes.Rendering(), "JPEG", quality=60),
    "WebP quality 75": _variant(shapes.Rendering(), "WEBP", quality=75),
}
HELD_OUT = frozenset({"bilinear 4x", "Lanczos 8x + jitter", "JPEG quality 60", "WebP quality 75"})
