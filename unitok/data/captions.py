"""Captions for a folder of images, in the conventions users already have, matched to image paths.

- A caption file (``--captions``): JSONL with ``{"file", "caption"}`` per line, CSV with a
  ``file,caption`` header, or COCO captions JSON (``images`` [{id, file_name}] and
  ``annotations`` [{image_id, caption}]).
- HF ``imagefolder`` metadata: ``metadata.jsonl`` / ``metadata.csv`` inside the folder (or its
  subfolders), with ``file_name`` relative to the metadata file's folder and ``text``.
- Class folders (ImageNet-style): a template such as "a photo of a {}" filled in with the name of
  the folder each image sits in.

An image may have several captions: the first is the reference, the others paraphrases. Errors
name the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from unitok.errors import UserError

Captions = dict[str, list[str]]  # image path -> its captions, the reference first

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")  # HF imagefolder's names, found in any subfolder
CAPTION_COLUMNS = ("file", "caption")
METADATA_COLUMNS = ("file_name", "text")


def read_captions(path: Path) -> Captions:
    """A ``--captions`` file: image path as the file names it (normalized) -> its captions, in
    file order, no repeats. The format follows the extension: ``.jsonl``, ``.csv`` or ``.json``
    (COCO captions)."""
    if not path.is_file():
        raise UserError(f"--captions {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _table(_read_jsonl(path, CAPTION_COLUMNS))
    if suffix == ".csv":
        return _table(_read_csv(path, CAPTION_COLUMNS))
    if suffix == ".json":
        return _table(_read_coco(path))
    raise UserError(f"--captions {path.name!r}: unknown format; use .jsonl ({{\"file\", \"caption\"}} "
                    "per line), .csv (header file,caption) or .json (COCO captions)")


def read_metadata(path: Path, root: Path) -> Captions:
    """An HF ``imagefolder`` metadata file under ``root``, keyed by path relative to ``root``:
    its ``file_name`` is relative to the metadata file's own folder, as in HF datasets."""
    rows = _read_jsonl(path, METADATA_COLUMNS) if path.suffix == ".jsonl" else _read_csv(path, METADATA_COLUMNS)
    folder = path.parent.relative_to(root).as_posix()
    return _table((f"{folder}/{file}", caption) for file, caption in rows)


def class_captions(image_files: list[str], template: str) -> Captions:
    """Caption each image from the folder it sits in (``golden_retriever/1.jpg`` with "a photo of
    a {}" -> "a photo of a golden retriever"), for layouts that name the class by the folder.
    Images directly in the image folder have no class folder and stay uncaptioned."""
    if template.count("{}") != 1:
        raise UserError(f"--class-template {template!r} must contain {{}} once, where the folder name goes, "
                        "e.g. \"a photo of a {}\"")
    table = {}
    for rel in image_files:
        folder = PurePosixPath(rel).parent.name
        if folder:
            table[rel] = [template.replace("{}", " ".join(folder.replace("_", " ").replace("-", " ").split()))]
    return table


def match_captions(image_files: list[str], table: Captions) -> tuple[Captions, list[str]]:
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

    matched: Captions = {}
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


def _table(rows: Iterable[tuple[str, str]]) -> Captions:
    """(file, caption) rows -> normalized file -> captions in row order; an empty caption still
    lists the file (it is known, just uncaptioned)."""
    table: Captions = defaultdict(list)
    for file, caption in rows:
        captions = table[_normalize(file)]
        caption = " ".join(caption.split())  # COCO captions carry stray newlines and double spaces
        if caption and caption not in captions:
            captions.append(caption)
    return dict(table)


def _read_jsonl(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """Rows of a JSONL file with a file column and a text column; the text may also be a list of
    captions (several per image) or null (none)."""
    file_key, text_key = columns
    expected = f"{{\"{file_key}\": \"...\", \"{text_key}\": \"...\"}}"
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path} line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise UserError(f"{path} line {number}: expected {expected}, got {line.strip()[:80]}")
            if file_key not in record or text_key not in record:
                raise UserError(f"{path} line {number}: expected {expected}; its columns are "
                                f"{', '.join(record) or 'none'}")
            file, text = record[file_key], record[text_key]
            texts = [] if text is None else text if isinstance(text, list) else [text]
            if not isinstance(file, str) or not all(isinstance(t, str) for t in texts):
                raise UserError(f"{path} line {number}: expected {expected} (the text may be a list of "
                                f"captions), got {line.strip()[:80]}")
            yield from ((file, t) for t in texts or [""])


def _read_csv(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(handle)
        missing = set(columns) - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path} line 1: the header must name the columns {','.join(columns)} "
                            f"(missing {', '.join(sorted(missing))}; found {reader.fieldnames})")
        file_key, text_key = columns
        for row in reader:
            if not row[file_key] or row[text_key] is None:
                raise UserError(f"{path} line {reader.line_num}: expected a {file_key} and a {text_key}, "
                                f"got {row}")
            yield row[file_key], row[text_key]


def _read_coco(path: Path) -> Iterator[tuple[str, str]]:
    """(file_name, caption) for every annotation, in file order: each image's first caption in the
    file is its reference, as in the COCO captions files."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} line {error.lineno} column {error.colno}: not valid JSON "
                        f"({error.msg}); one caption per line belongs in a .jsonl file") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path}: a .json caption file must be COCO captions, an object with "
                        "'images' [{id, file_name}] and 'annotations' [{image_id, caption}]")
    names = {}
    for index, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise UserError(f"{path}: images[{index}] needs 'id' and 'file_name', got {str(entry)[:80]}")
        if names.setdefault(entry["id"], entry["file_name"]) != entry["file_name"]:
            raise UserError(f"{path}: images[{index}] gives id {entry['id']!r} to {entry['file_name']!r}, "
                            f"an earlier entry to {names[entry['id']]!r}; ids must be unique")
    for index, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict) or "image_id" not in entry or not isinstance(entry.get("caption"), str):
            raise UserError(f"{path}: annotations[{index}] needs 'image_id' and 'caption', "
                            f"got {str(entry)[:80]}")
        # An id missing from 'images' is reported with the other captions that name no image.
        yield names.get(entry["image_id"], f"<image_id {entry['image_id']}>"), entry["caption"]


def _normalize(key: str) -> str:
    """``./a\\b.jpg`` and ``a/b.jpg`` name the same file."""
    return PurePosixPath(os.path.normpath(key.replace("\\", "/"))).as_posix()
