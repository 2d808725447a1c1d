"""Turning untrusted request bytes into PIL images, and the limits that keep the server alive.

Decoding is ``unitok.data.images.load_image`` (the loader of every stage: format sniffing, the
pixel-count check before any pixel is decoded, EXIF orientation, transparency on white); here its
refusals become ``ApiError``s whose message says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from PIL import Image

from unitok.api.errors import ApiError
from unitok.data.images import USER_FORMATS, ImageError, load_image

ALLOWED_FORMATS = USER_FORMATS
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
    try:
        return load_image(data, formats=ALLOWED_FORMATS, max_pixels=limits.max_image_pixels).image
    except ImageError as error:
        raise _refusal(error, name, limits) from None


def _refusal(error: ImageError, name: str, limits: Limits) -> ApiError:
    if error.reason == ImageError.EMPTY:
        return ApiError(400, f"{name}: empty file (0 bytes)", "invalid_image")
    if error.reason == ImageError.NOT_IMAGE:
        return ApiError(415, f"{name}: not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
                        "unsupported_image")
    if error.reason == ImageError.TOO_LARGE:
        # Without a size, Pillow's own (higher) decompression-bomb limit refused the header first.
        shown = f"is {error.size[0]}x{error.size[1]} pixels" if error.size else "has far too many pixels"
        return ApiError(400, f"{name}: image {shown}; the limit is {limits.max_image_pixels} pixels "
                             "(width x height). Downscale it before sending.", "image_too_large")
    return ApiError(400, f"{name}: the image data is truncated or corrupt ({error.detail})", "invalid_image")
