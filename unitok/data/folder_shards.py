"""Users' own image folders (plus captions) as webdataset shards.

Every image found under the input folders becomes one sample: ``jpg`` (size×size, RGB), ``txt``
(the reference caption: the first caption, or empty; an uncaptioned image trains the image
tokenizer and LM training leaves it out) and ``json`` (``file``, relative to its folder,
``captions``, ``paraphrases`` = the other captions, used as text-to-image prompts, and the original
``width``/``height``). Captions come from the conventions in ``unitok.data.captions``. With a
held-out split (``val_fraction`` or a val folder) the shards go to ``OUT/train`` and ``OUT/val``.
Files that cannot be used are skipped, counted and named in a summary; one bad photo never stops
a run over thousands, while a mistake in the inputs stops it before any shard is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image
from tqdm.auto import tqdm

from unitok.data.captions import (
    METADATA_NAMES,
    Captions,
    class_captions,
    match_captions,
    read_captions,
    read_metadata,
)
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
TRAIN, VAL = "train", "val"
ALL = ""  # no held-out split: the shards go straight into the output folder

SKIP_UNSUPPORTED = "unsupported file type"
SKIP_EMPTY = "empty file"
SKIP_NOT_IMAGE = "not a JPEG, PNG or WebP image"
SKIP_CORRUPT = "truncated or corrupt"
SKIP_TOO_LARGE = "too many pixels (decompression-bomb guard)"
_SKIP_REASONS = {ImageError.EMPTY: SKIP_EMPTY, ImageError.NOT_IMAGE: SKIP_NOT_IMAGE,
                 ImageError.CORRUPT: SKIP_CORRUPT, ImageError.TOO_LARGE: SKIP_TOO_LARGE}


@dataclass(frozen=True)
class FolderInput:
    """One image folder and the caption files that belong to it (none: the HF ``metadata.jsonl``
    / ``.csv`` files inside it, if any); ``val``: a held-out folder of the user's, all of it val."""

    images: Path
    captions: tuple[Path, ...] = ()
    val: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag that named it, for error messages."""
        return "--val-images" if self.val else "--images"


@dataclass
class InputSummary:
    """One input folder's share of a run: a line of the report."""

    images: Path
    captions_from: str
    written: dict[str, int]  # split -> images written
    skipped: int  # files, as in the report's "skipped" lines
    without_captions: int = 0

    def line(self) -> str:
        written = ", ".join(f"{count} {split}" if split else _plural(count, "image")
                            for split, count in self.written.items())
        return (f"  {self.images}: {written}; {self.without_captions} without captions; "
                f"{_plural(self.skipped, 'file')} skipped; captions: {self.captions_from}")


@dataclass
class FolderSummary:
    """What one ``write_folder_shards`` run did; ``report()`` is the text the CLI prints."""

    folders: dict[str, Path]  # split (ALL when there is none) -> its shard folder
    size: int
    inputs: list[InputSummary] = field(default_factory=list)
    shards: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    without_captions: list[str] = field(default_factory=list)
    captions_without_images: list[str] = field(default_factory=list)
    upscaled: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(self.written_to(split) for split in self.folders)

    def written_to(self, split: str) -> int:
        return sum(entry.written.get(split, 0) for entry in self.inputs)

    @property
    def skipped_count(self) -> int:
        return sum(len(files) for files in self.skipped.values())

    def report(self) -> str:
        lines = [self._headline(), *(entry.line() for entry in self.inputs)]
        if self.skipped:
            lines.append(f"skipped {_plural(self.skipped_count, 'file')}:")
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

    def _headline(self) -> str:
        what = f"wrote {self.written} images ({self.size}x{self.size} JPEG)"
        if ALL in self.folders:
            return f"{what} in {self._shards_in(ALL)} to {self.folders[ALL]}"
        return f"{what}: " + ", ".join(f"{self.written_to(split)} {split} in {self._shards_in(split)} to "
                                       f"{folder}" for split, folder in self.folders.items())

    def _shards_in(self, split: str) -> str:
        return _plural(len(self.shards.get(split, [])), "shard")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _listing(files: list[str]) -> str:
    shown = ", ".join(files[:SHOW_FIRST])
    more = f", ... and {len(files) - SHOW_FIRST} more" if len(files) > SHOW_FIRST else ""
    return f"{len(files)} ({shown}{more})"


@dataclass
class _Plan:
    """One input, worked out before any shard is written, so that every input error comes first."""

    source: FolderInput
    label: str  # prefix of its files in the report: "" for a single input, else its folder
    images: list[str]  # relative POSIX paths, sorted
    metadata: list[str]  # its HF metadata files
    unsupported: list[str]
    captions: Captions
    captions_from: str
    unmatched: list[str]  # caption entries that name none of its images
    splits: dict[str, str] = field(default_factory=dict)  # image -> the split it goes to


def write_folder_shards(
    images: str | os.PathLike | Sequence[FolderInput],
    out_dir: str | os.PathLike,
    *,
    captions: str | os.PathLike | None = None,
    class_template: str | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    size: int = 256,
    prefix: str = "data",
    shard_size: int = 1000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> FolderSummary:
    """Write every usable image under the input folders (each recursively, sorted by path) into shards.

    Args:
        images: one folder (``captions``: its caption file), or several ``FolderInput``.
        class_template: captions each image of the inputs that have no captions of their own
            (caption files, else HF metadata files) from the folder it sits in.
        val_fraction: hold out this fraction in ``OUT/val`` (the rest in ``OUT/train``), chosen by
            a hash of each image's path and ``seed``: a re-run gives the same split, and adding
            images never moves the old ones. Inputs with ``val=True`` split the same way instead.

    Images are resized (shorter side to ``size``) and center-cropped to size×size; sample keys
    count up across all inputs and splits, so they are unique in the whole set. Raises UserError,
    before writing, for a missing or empty folder, a bad or foreign caption file, a split left
    empty, or an output folder that already holds shards with this prefix (stale shards would
    silently join the new set); after writing, when no image at all could be read.
    """
    inputs = _as_inputs(images, captions)
    _check_options(inputs, val_fraction)
    out = Path(out_dir)
    splitting = val_fraction is not None or any(source.val for source in inputs)
    folders = {TRAIN: out / TRAIN, VAL: out / VAL} if splitting else {ALL: out}
    _refuse_stale_shards(folders.values(), prefix)
    plans = _plans(inputs, class_template)
    for plan in plans:
        plan.splits = {rel: _split_of(rel, plan.source, splitting, val_fraction, seed) for rel in plan.images}
    _refuse_empty_splits(plans, val_fraction)

    summary = FolderSummary(folders=folders, size=size)
    for plan in plans:
        splits = {split: 0 for split in folders if split in plan.splits.values()}
        summary.inputs.append(InputSummary(plan.source.images, plan.captions_from, splits, len(plan.unsupported)))
        summary.skipped[SKIP_UNSUPPORTED] += [plan.label + rel for rel in plan.unsupported]
        summary.captions_without_images += [plan.label + key for key in plan.unmatched]
    _write_images(plans, summary, prefix=prefix, shard_size=shard_size, max_pixels=max_pixels,
                  progress=progress)
    summary.skipped = {reason: files for reason, files in summary.skipped.items() if files}
    if not summary.written:
        reasons = ", ".join(f"{reason}: {len(files)}" for reason, files in sorted(summary.skipped.items())
                            if reason != SKIP_UNSUPPORTED)
        found = _plural(sum(len(plan.images) for plan in plans), "image")
        raise UserError(f"none of the {found} could be read ({reasons}); nothing was written")
    return summary


def _as_inputs(images: str | os.PathLike | Sequence[FolderInput],
               captions: str | os.PathLike | None) -> list[FolderInput]:
    if isinstance(images, str | os.PathLike):
        return [FolderInput(Path(images), (Path(captions),) if captions is not None else ())]
    if captions is not None:
        raise ValueError("pass captions inside each FolderInput when giving several inputs")
    return list(images)


def _check_options(inputs: list[FolderInput], val_fraction: float | None) -> None:
    """Refuse what cannot work, or would silently do something else than asked."""
    if not inputs:
        raise UserError("no image folder given; pass --images DIR")
    for source in inputs:
        if not source.images.is_dir():
            raise UserError(f"{source.flag} {str(source.images)!r} is not a folder; pass the folder that holds "
                            "your images")
    for index, first in enumerate(inputs):
        for second in inputs[index + 1:]:
            outer, inner = sorted((first, second), key=lambda source: len(source.images.resolve().parts))
            if inner.images.resolve().is_relative_to(outer.images.resolve()):
                raise UserError(f"{inner.flag} {inner.images} overlaps {outer.flag} {outer.images}: their "
                                "images would be written twice; pass folders that do not overlap")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction is not None and any(source.val for source in inputs):
        raise UserError("give --val-fraction or --val-images, not both")


def _refuse_stale_shards(folders, prefix: str) -> None:
    for folder in folders:
        stale = sorted(folder.glob(f"{prefix}-*.tar")) if folder.is_dir() else []
        if stale:
            raise UserError(f"{folder} already holds {len(stale)} '{prefix}-*.tar' shards; delete them or "
                            "choose another --out or --prefix")


def _plans(inputs: list[FolderInput], class_template: str | None) -> list[_Plan]:
    """Each input's files and captions, or the UserError that one of them calls for."""
    exclude = {path.resolve() for source in inputs for path in source.captions}
    plans = [_plan(source, f"{source.images.as_posix()}/" if len(inputs) > 1 else "", exclude, class_template)
             for source in inputs]
    if class_template is not None and all(plan.source.captions or plan.metadata for plan in plans):
        raise UserError("--class-template would caption no image: every folder has captions of its own "
                        "(--captions or HF metadata files), which take precedence; drop --class-template")
    return plans


def _plan(source: FolderInput, label: str, exclude: set[Path], class_template: str | None) -> _Plan:
    images, metadata, unsupported = _find_files(source.images, exclude)
    if not images:
        found = f"; other files: {_listing(unsupported)}" if unsupported else ""
        raise UserError(f"{source.flag} {source.images} holds no jpg, png or webp images{found}")
    captions, unmatched, captions_from = _input_captions(source, images, metadata, class_template)
    return _Plan(source, label, images, metadata, unsupported, captions, captions_from, unmatched)


def _find_files(root: Path, exclude: set[Path]) -> tuple[list[str], list[str], list[str]]:
    """Images, HF metadata files and other files under ``root``, as sorted relative POSIX paths.

    Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are not the user's
    data and are ignored, as are the caption files in ``exclude``.
    """
    images, metadata, unsupported = [], [], []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if name.startswith(".") or path.resolve() in exclude:
                continue
            rel = path.relative_to(root).as_posix()
            if name in METADATA_NAMES:
                metadata.append(rel)
            elif PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(rel)
            else:
                unsupported.append(rel)
    return sorted(images), sorted(metadata), sorted(unsupported)


def _input_captions(source: FolderInput, images: list[str], metadata: list[str],
                    class_template: str | None) -> tuple[Captions, list[str], str]:
    """One input's captions, the caption entries that named none of its images, and where they
    came from (for the report). One source per input: its --captions files, else the HF metadata
    files found in it, else the class template, which stands in for captions of the folder's own."""
    if source.captions:
        tables = {str(path): read_captions(path) for path in source.captions}
    elif metadata:
        tables = {rel: read_metadata(source.images / rel, source.images) for rel in metadata}
    elif class_template is not None:
        return class_captions(images, class_template), [], f"folder names in {class_template!r}"
    else:
        return {}, [], "none"
    captions: Captions = {}
    unmatched: list[str] = []
    for name, table in tables.items():
        matched, missing = match_captions(images, table)
        if not matched:
            example = f" (the first is {next(iter(table))!r})" if table else ""
            raise UserError(f"{name} names {_plural(len(table), 'image')}, none of them in {source.flag} "
                            f"{source.images}{example}; is it the caption file of another folder?")
        for rel, texts in matched.items():
            captions[rel] = list(dict.fromkeys(captions.get(rel, []) + texts))
        unmatched += missing
    named = ", ".join(tables)
    return captions, sorted(set(unmatched)), named if source.captions else f"HF metadata {named}"


def _split_of(rel: str, source: FolderInput, splitting: bool, val_fraction: float | None, seed: int) -> str:
    if not splitting:
        return ALL
    if source.val or (val_fraction and _held_out(rel, val_fraction, seed)):
        return VAL
    return TRAIN


def _held_out(rel: str, fraction: float, seed: int) -> bool:
    """Whether an image is in the val split: decided by a hash of its path (relative to its folder,
    so moving the folder keeps the split) and the seed alone, never by the other images."""
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _refuse_empty_splits(plans: list[_Plan], val_fraction: float | None) -> None:
    planned = Counter(split for plan in plans for split in plan.splits.values())
    if val_fraction and not planned[VAL]:
        raise UserError(f"--val-fraction {val_fraction} holds out none of the {planned[TRAIN]} images; "
                        "raise it, or pass a held-out folder with --val-images")
    if val_fraction and not planned[TRAIN]:
        raise UserError(f"--val-fraction {val_fraction} holds out all {planned[VAL]} images, leaving none to "
                        "train on; lower it")


def _write_images(plans: list[_Plan], summary: FolderSummary, *, prefix: str, shard_size: int,
                  max_pixels: int, progress: bool) -> None:
    """Write each plan's usable images to its split's shards and count everything in ``summary``."""
    total = sum(len(plan.images) for plan in plans)
    writers: dict[str, ShardWriter] = {}
    bar = tqdm(total=total, desc="images", unit="img", disable=not progress)
    with contextlib.ExitStack() as stack, bar:
        for plan, counts in zip(plans, summary.inputs, strict=True):
            for rel in plan.images:
                bar.update()
                try:
                    image, width, height = load_square_rgb(plan.source.images / rel, summary.size, max_pixels)
                except SkippedFile as skip:
                    summary.skipped[skip.reason].append(plan.label + rel)
                    counts.skipped += 1
                    continue
                if min(width, height) < summary.size:
                    summary.upscaled.append(plan.label + rel)
                texts = plan.captions.get(rel, [])
                if not texts:
                    summary.without_captions.append(plan.label + rel)
                    counts.without_captions += 1
                split = plan.splits[rel]
                if split not in writers:  # opened on first use: a split with no image gets no folder
                    writers[split] = stack.enter_context(
                        ShardWriter(summary.folders[split], prefix=prefix, max_count=shard_size))
                writers[split].write({
                    "__key__": f"{summary.written:08d}",  # no dots: webdataset splits keys at the first
                    "jpg": _encode_jpeg(image),
                    "txt": texts[0] if texts else "",
                    "json": {"file": rel, "captions": texts, "paraphrases": texts[1:],
                             "width": width, "height": height},
                })
                counts.written[split] += 1
    summary.shards = {split: list(writer.paths) for split, writer in writers.items()}


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
