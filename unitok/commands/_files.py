"""Reading what commands are given (images, JSONL request files) and writing images, with
one-line errors that name the file and line.

No torch import at module level (see ``unitok.cli``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unitok.atomic import atomic_file
from unitok.errors import UserError

MAX_REQUEST_LINE = 64 * 1024  # characters; a request is a path and a sentence


def read_image(path: str | Path, where: str = ""):
    """The image at ``path`` as every stage reads it (``unitok.data.images``), or a one-line error
    naming the file (after ``where``, e.g. "line 3 of f.jsonl: ")."""
    from unitok.data.images import USER_FORMATS, ImageError, load_image

    try:
        return load_image(path, formats=USER_FORMATS).image
    except (OSError, ImageError) as error:
        raise UserError(f"{where}cannot read image {path}: {error}") from None


@dataclass(frozen=True)
class ImageRequest:
    """One image and the text that goes with it (a question, an instruction)."""

    line: int  # 0-based line of the request file (0 for a request given as arguments)
    name: str  # the image path as given
    image: Path  # where it was found
    text: str
    where: str  # how errors name it: "" for arguments, else "line N of FILE: "


def single_request(image: str, text: str | None, kind: str) -> ImageRequest:
    request = ImageRequest(0, image, Path(image), (text or "").strip(), "")
    _check_request(request, kind)
    return request


def read_requests(path: str, text_field: str) -> list[ImageRequest]:
    """Lines ``{"image": PATH, text_field: TEXT}`` of a JSONL file; blank lines are skipped but
    keep their number. A relative image path is taken from the current folder, or else from the
    file's own folder. Every line is checked, and every image's header read, before any work (a
    file that is cut short is only found when it is decoded, and named then)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    requests = []
    for line, raw in enumerate(lines):
        if not raw.strip():
            continue
        where = f"line {line + 1} of {path}: "
        if len(raw) > MAX_REQUEST_LINE:
            raise UserError(f"{where}longer than {MAX_REQUEST_LINE} characters; one request a line")
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}not JSON ({error.msg}); expected {{\"image\": PATH, \"{text_field}\": TEXT}}") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}expected a JSON object {{\"image\": PATH, \"{text_field}\": TEXT}}")
        for field in ("image", text_field):
            if not isinstance(record.get(field), str):
                raise UserError(f"{where}\"{field}\" must be a string")
        request = ImageRequest(line, record["image"], _locate(record["image"], Path(path).parent), record[text_field].strip(), where)
        _check_request(request, text_field)
        requests.append(request)
    if not requests:
        raise UserError(f"{path} has no requests")
    return requests


def _locate(image: str, beside: Path) -> Path:
    candidate = Path(image)
    if candidate.is_absolute() or candidate.exists() or not (beside / candidate).exists():
        return candidate
    return beside / candidate


def _check_request(request: ImageRequest, kind: str) -> None:
    from unitok.data.images import USER_FORMATS, ImageError, check_image_header

    if not request.text:
        raise UserError(f"{request.where}the {kind} is empty")
    if not request.image.is_file():
        raise UserError(f"{request.where}no image file {request.image}")
    try:
        check_image_header(request.image, formats=USER_FORMATS)
    except (OSError, ImageError) as error:
        raise UserError(f"{request.where}cannot read image {request.image}: {error}") from None


def save_image(image, path: Path, image_format: str = "PNG") -> None:
    """Write ``image`` to ``path`` whole or not at all (a temp file, then a rename)."""
    try:
        with atomic_file(path) as tmp:
            image.save(tmp, format=image_format)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error}") from None
