"""Reading images the way every stage sees them: upright, in sRGB RGB, transparency on white.

Shard writing, shard reading, ``unitok caption``, the HTTP API and evaluation all decode through
``load_image``, and every PIL image that reaches a model goes through ``to_rgb``: a phone photo
turned by its EXIF tag or a transparent PNG reaches the model as it reached training.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from unitok.errors import UserError

# Pillow's decoders to try: a GIF or TIFF renamed .jpg is refused like any other non-image.
# (The JPEG decoder also opens the multi-picture JPEGs, MPO, that many cameras write.)
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP")
# What a user may hand a model to read (CLI, HTTP API): also GIF and BMP; rarer formats (TIFF,
# PSD, ...) widen the attack surface of an upload for no gain.
USER_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# A refusal limit of our own, checked from the header before decoding: Pillow's own guard warns
# at ~89 MP and raises only at twice that, after which a caller sees a crash, not a clear refusal.
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow resamples with a filter whose support grows with the downscale factor (antialiased,
# unlike torch's interpolate by default). reducing_gap first box-reduces by an integer factor,
# which is much faster on big photos and, at 3.0, indistinguishable from a full-filter resize.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0

# EXIF orientation -> the transpose that makes the image upright: ImageOps.exif_transpose's table.
# We apply it ourselves because exif_transpose also rewrites the EXIF block, and that step has
# crashed on real phone photos (Pillow issues #8548, #8605) while we discard EXIF anyway.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class ImageError(UserError):
    """An image that cannot be used. ``reason`` is one of the class constants (what each surface
    reports: a skip in a shard summary, an HTTP status, a CLI message), ``detail`` says more."""

    EMPTY = "empty file"
    NOT_IMAGE = "not an image"
    CORRUPT = "truncated or corrupt"
    TOO_LARGE = "too many pixels"

    def __init__(self, reason: str, detail: str = "", size: tuple[int, int] | None = None):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason, self.detail, self.size = reason, detail, size


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, upright; at least ``min_side`` on its shorter side when that was asked
    width: int  # the upright original's size, before any reduced-scale decoding
    height: int


def load_image(
    source: str | os.PathLike | bytes,
    *,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> LoadedImage:
    """Decode a file (path) or its bytes upright (EXIF orientation) in sRGB RGB.

    The pixel count is checked from the header, before any pixel is decoded (decompression
    bombs). ``min_side``: the caller needs no more than this on the shorter side, so a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale, never below it. Raises ``ImageError``.
    """
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError(ImageError.EMPTY)
        stream = io.BytesIO(source)
    else:
        if os.stat(source).st_size == 0:
            raise ImageError(ImageError.EMPTY)
        stream = source
    with warnings.catch_warnings():
        # Our own max_pixels check decides, not Pillow's lower DecompressionBombWarning threshold;
        # Pillow's UserWarnings (corrupt EXIF, palette transparency) would only break a progress
        # bar, since the problems they name are handled here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _decode(stream, formats, max_pixels, min_side)


def check_image_header(path: str | os.PathLike, *, formats: tuple[str, ...] = DEFAULT_FORMATS,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse what ``load_image`` would refuse from the header alone (no pixel decoded): a cheap
    check of many files before long work. Raises ``ImageError``."""
    if os.stat(path).st_size == 0:
        raise ImageError(ImageError.EMPTY)
    _open_header(path, formats, max_pixels).close()


def _open_header(stream, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    try:
        image = Image.open(stream, formats=formats)
    except Image.DecompressionBombError as error:
        raise ImageError(ImageError.TOO_LARGE, str(error)) from None
    except UnidentifiedImageError:
        raise ImageError(ImageError.NOT_IMAGE, f"expected {', '.join(formats)}") from None
    except (OSError, SyntaxError, ValueError) as error:  # header present but malformed
        raise ImageError(ImageError.CORRUPT, f"unreadable header: {error}") from None
    # Image.open read only the header: the size is known, no pixel has been decoded yet.
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(ImageError.TOO_LARGE, f"{width}x{height}, the limit is {max_pixels}", (width, height))
    return image


def _decode(stream, formats: tuple[str, ...], max_pixels: int, min_side: int | None) -> LoadedImage:
    image = _open_header(stream, formats, max_pixels)
    with image:
        width, height = image.size
        orientation = _orientation(image)
        if orientation in (5, 6, 7, 8):  # turned by 90°: the upright image is transposed
            width, height = height, width
        if min_side is not None:
            # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale (never below what we need), as
            # Image.thumbnail does: many times faster on a phone photo, and near-identical.
            scale = min_side / min(image.size)
            image.draft(None, (max(min_side, int(image.width * scale)), max(min_side, int(image.height * scale))))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageError(ImageError.CORRUPT, str(error)) from None
        method = EXIF_TRANSPOSE.get(orientation)
        rgb = to_rgb(image.transpose(method) if method is not None else image)
    rgb.info.clear()  # text chunks and profiles are done with; they can be megabytes
    return LoadedImage(rgb, width, height)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright). Pillow raises many kinds of errors on malformed
    EXIF blocks (SyntaxError, ZeroDivisionError, struct.error...); treat those as upright."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB in sRGB from any mode Pillow decodes images into.

    Beyond ``Image.convert("RGB")``: transparency is composited on white (convert would expose
    whatever colour hides under alpha=0); 16-bit grayscale is scaled to 8 bits (convert clips
    every value above 255 to white); an embedded ICC profile (CMYK, Display P3 phone photos) is
    converted to sRGB with LittleCMS instead of being dropped.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image).astype(np.float32)
        if image.mode != "I" or values.max() > 255:  # mode I also holds 8-bit data in some files
            values = values / 257
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode L
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    icc = image.info.get("icc_profile")
    if icc and image.mode in ("RGB", "CMYK"):
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the plain conversion below
    return image.convert("RGB")


def center_square(image: Image.Image, size: int, resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """Crop the central square (the shorter side) and resize it to size×size.

    Cropped first, then resized: a resize with ``box=`` (as ``PIL.ImageOps.fit`` does) would let
    the filter reach past the box, so what the crop removes would bleed into the edges. Ours adds
    ``reducing_gap``, which ``ImageOps.fit`` cannot pass; an image already size×size is copied.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side)) if width != height else image
    return square.resize((size, size), resample, reducing_gap=REDUCING_GAP)
