"""Turning untrusted request bytes into PIL images, and the limits that keep the server alive.

Everything here runs before an image reaches the model: base64 decoding, format sniffing,
the pixel-count check that stops decompression bombs *before* any pixel is decoded, and the
truncation check. Each refusal is an ``ApiError`` whose message says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from unitok.api.errors import ApiError

# Formats with mature decoders; rarer ones (TIFF, PSD, ...) widen the attack surface for no gain.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_REMOTE_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The defaults suit a model that reads small images."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_images: int = 16  # images per caption request
    max_image_pixels: int = 4096 * 4096  # width * height, checked before decoding
    max_prompt_chars: int = 1000
    max_n: int = 8  # images per generation request
    max_guidance_scale: float = 50.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_image_pixels", "max_prompt_chars", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def decode_base64_image(text: str, index: int) -> bytes:
    """Bytes of the ``index``-th JSON image: plain base64 or a ``data:image/...;base64,`` URL."""
    if _REMOTE_URL.match(text):
        raise ApiError(422, f"images.{index}: URLs are not fetched; send the image bytes as base64 "
                            "(JSON) or as a multipart file", "url_not_supported")
    # Line breaks are common in base64 produced by command-line tools; they carry no data.
    text = "".join(_DATA_URL.sub("", text, count=1).split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"images.{index}: not valid base64 (standard alphabet, with padding)",
                       "invalid_base64") from None


def open_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """Decode one image fully, refusing empty, unknown, oversized and truncated inputs."""
    if not data:
        raise ApiError(400, f"{name}: empty file (0 bytes)", "invalid_image")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ApiError(415, f"{name}: not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
                       "unsupported_image") from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, None, limits) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(400, f"{name}: unreadable image header ({error})", "invalid_image") from None
    # Image.open read only the header: the size is known, no pixel has been decoded yet.
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise _too_many_pixels(name, (width, height), limits)
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ApiError(400, f"{name}: the image data is truncated or corrupt ({error})", "invalid_image") from None


def _too_many_pixels(name: str, size: tuple[int, int] | None, limits: Limits) -> ApiError:
    # Without a size, Pillow's own (higher) decompression-bomb limit refused the header first.
    shown = f"is {size[0]}x{size[1]} pixels" if size else "has far too many pixels"
    return ApiError(400, f"{name}: image {shown}; the limit is {limits.max_image_pixels} pixels "
                         "(width x height). Downscale it before sending.", "image_too_large")
