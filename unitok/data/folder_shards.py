"""A user's own image folder (plus optional captions) as webdataset shards.

Every image found under the folder becomes one sample: ``jpg`` (size×size, RGB), ``txt`` (the
reference caption: the first caption, or empty; an uncaptioned image trains the image tokenizer
and LM training leaves it out) and ``json`` (``file``, ``captions``, ``paraphrases`` = the other
captions, used as text-to-image prompts, and the original ``width``/``height``). Files that
cannot be used are skipped, counted and named in a summary; one bad photo never stops a run over
thousands.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image
from tqdm.auto import tqdm

from unitok.data.captions import match_captions, read_captions
from unitok.data.images import DEFAULT_MAX_PIXELS, ImageError, center_square, load_image
from unitok.data.shards import ShardWriter
from unitok.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Photos are stored as JPEG, not PNG: at quality 95 with full-resolution chroma (4:4:4) the
# re-encoding error is far below what an image tokenizer reconstructs, and the shards are much
# smaller (docs/results.md): shard I/O is what streaming training waits on. webdataset's own JPEG
# encoder takes neither setting, hence ours.
JPEG_QUALITY = 95
SHOW_FIRST = 5  # file names listed per summary line

SKIP_UNSUPPORTED = "unsupported file type"
SKIP_EMPTY = "empty file"
SKIP_NOT_IMAGE = "not a JPEG, PNG or WebP image"
SKIP_CORRUPT = "truncated or corrupt"
SKIP_TOO_LARGE = "too many pixels (decompression-bomb guard)"
_SKIP_REASONS = {ImageError.EMPTY: SKIP_EMPTY, ImageError.NOT_IMAGE: SKIP_NOT_IMAGE,
                 ImageError.CORRUPT: SKIP_CORRUPT, ImageError.TOO_LARGE: SKIP_TOO_LARGE}


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
            lines.append("images without captions (kept for the image tokenizer, left out of LM training): "
                         f"{_listing(self.without_captions)}")
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
    an empty one, for the image tokenizer (LM training leaves them out). Raises UserError for a
    missing folder, a bad caption file or an output folder that already holds shards with this
    prefix (stale shards would silently join the new set).
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
    """``path`` upright, in sRGB, resized and center-cropped to size×size (``unitok.data.images``).

    Returns the image and the original (upright) width and height; raises SkippedFile for files
    that cannot be used.
    """
    try:
        loaded = load_image(path, max_pixels=max_pixels, min_side=size)
    except ImageError as error:
        raise SkippedFile(_SKIP_REASONS[error.reason]) from error
    return center_square(loaded.image, size), loaded.width, loaded.height


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 0 = 4:4:4
    return buffer.getvalue()
