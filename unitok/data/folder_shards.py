"""A user's own image folder (plus optional captions) as webdataset shards.

Every image found under the folder becomes one sample: ``jpg`` (size×size, RGB), ``txt`` (the
reference caption: the first caption, or empty) and ``json`` (``file``, ``captions``,
``paraphrases`` = the other captions, used as text-to-image prompts, and the original
``width``/``height``). Files that cannot be used are skipped, counted and named in a summary;
one bad photo never stops a run over thousands.

Captions come from JSONL (``{"file", "caption"}`` per line), CSV (header ``file,caption``) or a
COCO captions JSON (``images`` [{id, file_name}] + ``annotations`` [{image_id, caption}]).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError
from tqdm.auto import tqdm

from unitok.data.shards import ShardWriter
from unitok.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Pillow's decoders to try: a GIF or TIFF renamed .jpg is refused like any other non-image.
# (The JPEG decoder also opens the multi-picture JPEGs, MPO, that many cameras write.)
DECODER_FORMATS = ("JPEG", "PNG", "WEBP")
# A refusal limit of our own, checked from the header before decoding: Pillow's own guard warns
# at ~89 MP and raises only at twice that, after which a caller sees a crash, not a skip.
DEFAULT_MAX_PIXELS = 100_000_000
# Photos are stored as JPEG, not PNG: at quality 95 with full-resolution chroma (4:4:4) the
# re-encoding error (40.5 dB mean PSNR on COCO photos at 256 px) is far below what an image
# tokenizer reconstructs, and the shards are 2.8x smaller than PNG (41 vs 114 KiB per image):
# shard I/O is what streaming training waits on.
JPEG_QUALITY = 95
# Pillow resamples with a filter whose support grows with the downscale factor (antialiased,
# unlike torch's interpolate by default). reducing_gap first box-reduces by an integer factor,
# which is much faster on big photos and, at 3.0, indistinguishable from a full-filter resize.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
SHOW_FIRST = 5  # file names listed per summary line

# EXIF orientation -> the transpose that makes the image upright: ImageOps.exif_transpose's table.
# We apply it ourselves because exif_transpose also rewrites the EXIF block, and that step has
# crashed on real phone photos (Pillow issues #8548, #8605) while we discard EXIF anyway.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

SKIP_UNSUPPORTED = "unsupported file type"
SKIP_EMPTY = "empty file"
SKIP_NOT_IMAGE = "not a JPEG, PNG or WebP image"
SKIP_CORRUPT = "truncated or corrupt"
SKIP_TOO_LARGE = "too many pixels (decompression-bomb guard)"

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass
class FolderSummary:
    """What one ``write_folder_shards`` run did; ``report()`` is the text the CLI prints."""

    out_dir: Path
    size: int
    written: int = 0
    shards: list[Path] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    without_captions: list[str] = field(default_factory=list)
    captions_without_images: list[str] = field(default_factory=list)
    upscaled: list[str] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return sum(len(files) for files in self.skipped.values())

    def report(self) -> str:
        shards = f"{len(self.shards)} shard{'s' if len(self.shards) != 1 else ''}"
        lines = [f"wrote {self.written} images ({self.size}x{self.size} JPEG) in {shards} to {self.out_dir}"]
        if self.skipped:
            count = self.skipped_count
            lines.append(f"skipped {count} file{'s' if count != 1 else ''}:")
            for reason in sorted(self.skipped):
                lines.append(f"  {reason}: {_listing(self.skipped[reason])}")
        else:
            lines.append("skipped 0 files")
        if self.without_captions:
            lines.append(f"images without captions (kept, empty caption): {_listing(self.without_captions)}")
        if self.captions_without_images:
            lines.append("captions matching no image (missing, or a file name found in several folders): "
                         f"{_listing(self.captions_without_images)}")
        if self.upscaled:
            lines.append(f"images smaller than {self.size} px (upscaled, will look soft): "
                         f"{_listing(self.upscaled)}")
        return "\n".join(lines)


def _listing(files: list[str]) -> str:
    shown = ", ".join(files[:SHOW_FIRST])
    more = f", ... and {len(files) - SHOW_FIRST} more" if len(files) > SHOW_FIRST else ""
    return f"{len(files)} ({shown}{more})"


def write_folder_shards(
    images: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    captions: str | os.PathLike | None = None,
    size: int = 256,
    prefix: str = "data",
    shard_size: int = 1000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> FolderSummary:
    """Write every usable image under ``images`` (recursively, sorted by path) into shards.

    Images are resized (shorter side to ``size``) and center-cropped to size×size. Captions are
    matched to an image by its path relative to ``images``, else by its file name when that name
    is unique on both sides (COCO lists bare file names). Images without a caption are kept with
    an empty one. Raises UserError for a missing folder, a bad caption file or an output folder
    that already holds shards with this prefix (stale shards would silently join the new set).
    """
    root = Path(images)
    if not root.is_dir():
        raise UserError(f"--images {str(images)!r} is not a folder; pass the folder that holds your images")
    out = Path(out_dir)
    stale = sorted(out.glob(f"{prefix}-*.tar")) if out.is_dir() else []
    if stale:
        raise UserError(f"{out} already holds {len(stale)} '{prefix}-*.tar' shards; delete them or choose "
                        "another --out or --prefix")
    caption_path = Path(captions) if captions is not None else None
    table = read_captions(caption_path) if caption_path is not None else {}

    summary = FolderSummary(out_dir=out, size=size)
    files = _find_files(root, exclude={caption_path.resolve()} if caption_path else set())
    image_files = []
    for rel in files:
        if PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES:
            image_files.append(rel)
        else:
            summary.skipped[SKIP_UNSUPPORTED].append(rel)
    matched, summary.captions_without_images = match_captions(image_files, table)

    with ShardWriter(out, prefix=prefix, max_count=shard_size) as writer:
        for rel in tqdm(image_files, desc="images", unit="img", disable=not progress):
            try:
                image, width, height = load_square_rgb(root / rel, size, max_pixels)
            except SkippedFile as skip:
                summary.skipped[skip.reason].append(rel)
                continue
            if min(width, height) < size:
                summary.upscaled.append(rel)
            texts = matched.get(rel, [])
            if not texts:
                summary.without_captions.append(rel)
            writer.write({
                "__key__": f"{summary.written:08d}",  # no dots: webdataset splits keys at the first
                "jpg": _encode_jpeg(image),
                "txt": texts[0] if texts else "",
                "json": {"file": rel, "captions": texts, "paraphrases": texts[1:],
                         "width": width, "height": height},
            })
            summary.written += 1
    summary.shards = list(writer.paths)
    summary.skipped = dict(summary.skipped)
    return summary


def _find_files(root: Path, exclude: set[Path]) -> list[str]:
    """Relative POSIX paths of every file under ``root``, sorted; hidden files and folders
    (``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are not the user's data and are ignored."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and path.resolve() not in exclude:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


# ---------------------------------------------------------------- images


class SkippedFile(Exception):
    """A file that cannot be used; ``reason`` is one of the ``SKIP_*`` summary lines."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_square_rgb(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int, int]:
    """Decode ``path`` upright (EXIF orientation), in sRGB, resized and center-cropped to size×size.

    Returns the image and the original (upright) width and height; raises SkippedFile for files
    that cannot be used. Captioning user images should go through this too, to see them as
    training did.
    """
    if path.stat().st_size == 0:
        raise SkippedFile(SKIP_EMPTY)
    with warnings.catch_warnings():
        # Our own max_pixels check decides, not Pillow's lower DecompressionBombWarning threshold;
        # Pillow's UserWarnings (corrupt EXIF, palette transparency) would only break the progress
        # bar, since the problems they name are handled here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _decode_square(path, size, max_pixels)


def _decode_square(path: Path, size: int, max_pixels: int) -> tuple[Image.Image, int, int]:
    try:
        image = Image.open(path, formats=DECODER_FORMATS)
    except Image.DecompressionBombError as error:
        raise SkippedFile(SKIP_TOO_LARGE) from error
    except UnidentifiedImageError as error:
        raise SkippedFile(SKIP_NOT_IMAGE) from error
    except (OSError, SyntaxError, ValueError) as error:  # header present but malformed
        raise SkippedFile(SKIP_CORRUPT) from error
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise SkippedFile(SKIP_TOO_LARGE)
        orientation = _orientation(image)
        if orientation in (5, 6, 7, 8):  # turned by 90°: the upright image is transposed
            width, height = height, width
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the size we need),
        # as Image.thumbnail does: a 12 MP photo -> 256 px took 38 instead of 297 ms, and the
        # result differs from a full decode by ~47 dB PSNR.
        scale = size / min(width, height)
        image.draft(None, (max(size, int(image.width * scale)), max(size, int(image.height * scale))))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:  # truncated data, bad chunks, bad CRC
            raise SkippedFile(SKIP_CORRUPT) from error
        method = EXIF_TRANSPOSE.get(orientation)
        rgb = to_rgb(image.transpose(method) if method is not None else image)
    return center_square(rgb, size), width, height


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright). Pillow raises many kinds of errors on malformed
    EXIF blocks (SyntaxError, ZeroDivisionError, struct.error...); treat those as upright."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB in sRGB from any mode Pillow decodes JPEG/PNG/WebP into.

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


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and keep the central size×size square.

    Done as one resample of the central square (``box=``), as ``PIL.ImageOps.fit`` does, so there
    is no second rounding step; ours adds ``reducing_gap``, which ``ImageOps.fit`` cannot pass.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side),
                        reducing_gap=REDUCING_GAP)


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 0 = 4:4:4
    return buffer.getvalue()


# ---------------------------------------------------------------- captions


def read_captions(path: Path) -> dict[str, list[str]]:
    """File path as named in the caption file (normalized) -> its captions, in file order, no repeats.

    The format follows the extension: ``.jsonl``, ``.csv`` or ``.json`` (COCO captions).
    """
    if not path.is_file():
        raise UserError(f"--captions {str(path)!r} is not a file")
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".json": _read_coco}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"--captions {path.name!r}: unknown format; use .jsonl ({{\"file\", \"caption\"}} "
                        "per line), .csv (header file,caption) or .json (COCO captions)")
    table: dict[str, list[str]] = defaultdict(list)
    for file, caption in reader(path):
        captions = table[_normalize(file)]
        caption = " ".join(caption.split())  # COCO captions carry stray newlines and double spaces
        if caption and caption not in captions:
            captions.append(caption)
    return dict(table)


def _read_jsonl(path: Path):
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path.name} line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict) or not isinstance(record.get("file"), str) \
                    or not isinstance(record.get("caption"), str):
                raise UserError(f"{path.name} line {number}: expected {{\"file\": \"...\", \"caption\": \"...\"}}, "
                                f"got {line.strip()[:80]}")
            yield record["file"], record["caption"]


def _read_csv(path: Path):
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(handle)
        missing = {"file", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path.name} line 1: the header must name the columns file,caption "
                            f"(missing {', '.join(sorted(missing))}; found {reader.fieldnames})")
        for row in reader:
            if not row["file"] or row["caption"] is None:
                raise UserError(f"{path.name} line {reader.line_num}: expected a file and a caption, got {row}")
            yield row["file"], row["caption"]


def _read_coco(path: Path):
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path.name} line {error.lineno} column {error.colno}: not valid JSON "
                        f"({error.msg}); one caption per line belongs in a .jsonl file") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path.name}: a .json caption file must be COCO captions, an object with "
                        "'images' [{id, file_name}] and 'annotations' [{image_id, caption}]")
    names = {}
    for index, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise UserError(f"{path.name}: images[{index}] needs 'id' and 'file_name', got {str(entry)[:80]}")
        names[entry["id"]] = entry["file_name"]
    for index, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict) or "image_id" not in entry or not isinstance(entry.get("caption"), str):
            raise UserError(f"{path.name}: annotations[{index}] needs 'image_id' and 'caption', "
                            f"got {str(entry)[:80]}")
        # An id missing from 'images' is reported with the other captions that name no image.
        yield names.get(entry["image_id"], f"<image_id {entry['image_id']}>"), entry["caption"]


def match_captions(image_files: list[str], table: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Pair caption-file entries with images: by relative path, else by a file name that is unique
    among the images and among the caption entries (a name in two folders is never guessed).

    Returns relative image path -> captions, and the captioned entries that matched no image.
    """
    images_by_name: dict[str, list[str]] = defaultdict(list)
    for rel in image_files:
        images_by_name[PurePosixPath(rel).name].append(rel)
    keys_by_name: dict[str, list[str]] = defaultdict(list)
    for key in table:
        keys_by_name[PurePosixPath(key).name].append(key)

    matched: dict[str, list[str]] = {}
    used: set[str] = set()
    for rel in image_files:
        key = rel if rel in table else None
        name = PurePosixPath(rel).name
        if key is None and len(images_by_name[name]) == 1 and len(keys_by_name[name]) == 1:
            key = keys_by_name[name][0]
        if key is not None:
            matched[rel] = table[key]
            used.add(key)
    return matched, sorted(key for key, texts in table.items() if texts and key not in used)


def _normalize(key: str) -> str:
    """``./a\\b.jpg`` and ``a/b.jpg`` name the same file."""
    return PurePosixPath(os.path.normpath(key.replace("\\", "/"))).as_posix()
