"""Faithful variants of an RGB image, the way users' files come: each one, read the way UniTok
reads images (``unitok.data.images``), is the original again (exactly, except for JPEG's loss).

- ``exif_turned``: the pixels stored turned by 90°, with the EXIF orientation that turns them back
  (what phone cameras write);
- ``transparent``: the white background made transparent, with black under it (what an RGBA
  export from a drawing program may hold);
- ``gray16``: a gray image as 16-bit grayscale PNG; ``gray_alpha``: as gray + alpha (LA).
"""

import io

import numpy as np
from PIL import Image

ORIENTATION = 0x0112


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def exif_turned(image: Image.Image, image_format: str = "JPEG", **options) -> bytes:
    """Stored turned 90° counter-clockwise, tagged orientation 6 ("turn 90° clockwise to view")."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return encoded(image.transpose(Image.Transpose.ROTATE_90), image_format, exif=exif, **options)


def transparent(image: Image.Image) -> bytes:
    """RGBA PNG: pure white pixels transparent (black under them), every other pixel opaque."""
    rgb = np.asarray(image.convert("RGB"))
    white = (rgb == 255).all(axis=-1)
    rgba = np.dstack([np.where(white[..., None], 0, rgb), np.where(white, 0, 255)]).astype(np.uint8)
    return encoded(Image.fromarray(rgba), "PNG")  # 4 channels -> mode RGBA


def gray16(image: Image.Image) -> bytes:
    """16-bit grayscale PNG of a gray image (each 8-bit value v stored as v * 257)."""
    values = np.asarray(image.convert("L")).astype(np.uint16) * 257
    return encoded(Image.fromarray(values), "PNG")  # uint16 -> mode I;16


def gray_alpha(image: Image.Image) -> bytes:
    """LA PNG of a gray image, every pixel opaque."""
    gray = np.asarray(image.convert("L"))
    return encoded(Image.fromarray(np.dstack([gray, np.full_like(gray, 255)])), "PNG")  # 2 channels -> LA
