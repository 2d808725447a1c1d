"""Atomic writes of files and folders: a reader sees the previous version or the complete new one.

Every file or folder UniTok writes as an output (exports, images, reports, shards, checkpoints)
goes through one of these two, so an interrupted run never leaves a half-written file that looks
finished where a good one was.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    """The process's umask. Read from /proc on Linux: setting it to read it back (the only portable
    way, used elsewhere) leaves a moment in which another thread's new file is world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _grant_default_permissions(root: Path) -> None:
    """Give ``root`` and everything under it the permissions a new file or folder gets under the
    umask. Why: some writers create owner-only files (safetensors' ``save_file`` writes 0600 since
    0.5), and an export is meant to be shared or served as it is."""
    mask = _current_umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _temporary_sibling(target: Path, suffix: str = "") -> Path:
    # A fresh name each time (two writers of one file never share a temporary), created with the
    # default permissions: tempfile.mkstemp/mkdtemp would make outputs readable by their owner only.
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    The temporary name ends in ``path``'s suffix, so writers that choose a format by extension
    (Pillow, matplotlib) write the right one. On an exception it is removed and ``path`` is kept.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(target, target.suffix)
    try:
        yield tmp
        _grant_default_permissions(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir`` to fill; on success it replaces ``out_dir``.

    On an exception the temporary folder is removed and ``out_dir`` is left as it was, so an
    interrupted save never leaves a half-written model where a good one was.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        _grant_default_permissions(tmp)
        if out.exists():
            old = _temporary_sibling(out)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
