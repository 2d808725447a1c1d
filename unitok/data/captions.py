"""Caption files for a folder of images: JSONL, CSV or COCO captions JSON, matched to image paths.

JSONL has ``{"file", "caption"}`` per line, CSV a ``file,caption`` header, a COCO captions JSON
``images`` [{id, file_name}] and ``annotations`` [{image_id, caption}]. Errors name the line.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

from unitok.errors import UserError


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
