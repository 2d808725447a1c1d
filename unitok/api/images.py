"""Turning untrusted request bytes into PIL images, and the limits that keep the server alive.

Decoding is ``unitok.data.images.load_image`` (the loader of every stage: format sniffing, the
pixel-count check before any pixel is decoded, EXIF orientation, transparency on white); here its
refusals become ``ApiError``s whose message says what to send instead. An upload is reduced to the
model's input size as soon as it is decoded (``open_image``), and ``DecodeBudget`` caps the pixels
being decoded at once, so a queue of uploads holds small images and a burst of large ones cannot
take gigabytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import ctypes.util
import io
import re
import sys
from dataclasses import dataclass

from PIL import Image

from tokenizer.images import square_resize
from unitok.api.errors import ApiError
from unitok.data.images import USER_FORMATS, ImageError, load_image

ALLOWED_FORMATS = USER_FORMATS
# RFC 2397: data:[<mediatype>][;base64],<data>, where the media type may carry parameters
# (data:image/png;charset=utf-8;base64,...). Only base64 data is taken.
_DATA_URL = re.compile(r"data:image/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
_BASE64_WHITESPACE = b" \t\r\n\v\f"
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
    max_json_body_bytes: int = 16 * 1024  # a generation request is a prompt and a few numbers
    max_decoding_pixels: int = 4096 * 4096  # pixels of all images being decoded at once: one of the largest
    max_upscale: int = 16  # largest generation size: this many times the model's image size
    request_timeout_s: float = 300.0  # from submission to the model until the answer
    body_timeout_s: float = 30.0  # to receive the whole request body

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_image_pixels", "max_prompt_chars", "max_n",
                     "max_json_body_bytes", "max_decoding_pixels", "max_upscale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class DecodeBudget:
    """At most ``max_pixels`` pixels being decoded at once, over all requests; an image larger
    than the whole budget is decoded alone. Waiters queue on the event loop, not in threads."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.in_use = 0
        self._freed = asyncio.Condition()

    async def decode(self, data: bytes, name: str, limits: Limits, size: int) -> Image.Image:
        """``open_image`` in a worker thread once the image's pixels fit the budget."""
        pixels = min(_header_pixels(data), self.max_pixels)
        async with self._freed:
            await self._freed.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.max_pixels)
            self.in_use += pixels
        try:
            return await asyncio.to_thread(_open_and_release, data, name, limits, size, pixels)
        finally:
            async with self._freed:
                self.in_use -= pixels
                self._freed.notify_all()


# Below this many pixels a decode's buffers are small enough for the allocator to keep.
_TRIM_AFTER_PIXELS = 1024 * 1024
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _open_and_release(data: bytes, name: str, limits: Limits, size: int, pixels: int) -> Image.Image:
    """``open_image``, then (after a large image, on glibc) hand the freed decode buffers back to
    the OS: glibc keeps them in the worker thread's arena otherwise, and a burst of large uploads
    would leave the server that much bigger for good."""
    try:
        return open_image(data, name, limits, size)
    finally:
        if pixels >= _TRIM_AFTER_PIXELS and _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
            _LIBC.malloc_trim(0)


def _header_pixels(data: bytes) -> int:
    """Width x height from the header (no pixel decoded); 1 for what is no image (refused later)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return max(1, image.width * image.height)
    except Exception:  # noqa: BLE001 - open_image reports why it is unusable
        return 1


def decode_base64_image(text: str, index: int) -> bytes:
    """Bytes of the ``index``-th JSON image: plain base64 or a ``data:image/...;base64,`` URL."""
    return decode_base64_text(text, f"images.{index}")


def decode_base64_text(text: str, name: str) -> bytes:
    """Bytes of plain base64 or of a ``data:image/...[;param=value];base64,`` URL (RFC 2397)."""
    if _REMOTE_URL.match(text):
        raise ApiError(422, f"{name}: URLs are not fetched; send the image bytes as base64 "
                            "(JSON) or as a multipart file", "url_not_supported")
    prefix = _DATA_URL.match(text)
    if prefix is None and text[:5].lower() == "data:":
        raise ApiError(422, f"{name}: a data URL must be data:image/<type>;base64,<data>", "invalid_base64")
    try:
        # Line breaks are common in base64 written by command-line tools; they carry no data.
        # bytes.translate drops them in one pass (no list of pieces: memory stays ~2x the text).
        data = text[prefix.end():] if prefix else text
        return base64.b64decode(data.encode("ascii").translate(None, _BASE64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise ApiError(422, f"{name}: not valid base64 (standard alphabet, with padding)",
                       "invalid_base64") from None


def open_image(data: bytes, name: str, limits: Limits, size: int | None = None) -> Image.Image:
    """Decode one image, refusing empty, unknown, oversized and truncated inputs. ``size``: the
    model reads ``size`` x ``size``, so the image is reduced to that at once (exactly as the model
    would reduce it: ``tokenizer.images.square_resize``), JPEGs already while decoding."""
    try:
        image = load_image(data, formats=ALLOWED_FORMATS, max_pixels=limits.max_image_pixels, min_side=size).image
    except ImageError as error:
        raise _refusal(error, name, limits) from None
    return image if size is None else square_resize(image, size)


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
