"""Writing an evaluation's files: each one whole or not at all (``unitok.atomic``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from unitok.atomic import atomic_file

# What a report file holds: text (Markdown, JSON lines), a JSON-ready dict, or a picture.
Content = str | dict | Image.Image


def write_files(out_dir: str | os.PathLike, files: dict[str, Content]) -> dict[str, Path]:
    """Write each ``name: content`` into ``out_dir`` atomically; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[type, Callable[[Path, Content], object]] = {
        str: lambda path, text: path.write_text(text, encoding="utf-8"),
        dict: lambda path, data: path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"),
        Image.Image: lambda path, image: image.save(path, format="PNG"),
    }
    paths = {}
    for name, content in files.items():
        write = next(writer for kind, writer in writers.items() if isinstance(content, kind))
        with atomic_file(out / name) as tmp:
            write(tmp, content)
        paths[name] = out / name
    return paths
