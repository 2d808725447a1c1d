"""Outputs written through ``unitok.atomic`` get the permissions any new file or folder gets (the
umask), not the owner-only ones of ``tempfile``'s temporaries: an export is shared as it is."""

import os
import stat

from unitok.atomic import atomic_directory, atomic_file


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_export_folder_and_a_file_are_readable_by_everyone_under_the_usual_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "export") as folder:
            (folder / "config.json").write_text("{}")
        with atomic_file(tmp_path / "report.json") as file:
            file.write_text("{}")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "export") == 0o755
    assert mode(tmp_path / "export" / "config.json") == mode(tmp_path / "report.json") == 0o644
