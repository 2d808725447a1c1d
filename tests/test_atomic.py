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


def test_owner_only_files_a_writer_makes_are_shared_like_any_new_file(tmp_path):
    """safetensors' save_file writes 0600; the export still comes out 0644 under umask 022."""
    import numpy as np
    from safetensors.numpy import save_file

    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "export") as folder:
            save_file({"weight": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"))
            (folder / "sub").mkdir(mode=0o700)
            (folder / "sub" / "part.bin").write_bytes(b"x")
            os.chmod(folder / "sub" / "part.bin", 0o600)
        with atomic_file(tmp_path / "weights.safetensors") as file:
            save_file({"weight": np.zeros(2, dtype=np.float32)}, str(file))
    finally:
        os.umask(previous)
    export = tmp_path / "export"
    assert mode(export / "sub") == 0o755
    assert mode(export / "model.safetensors") == mode(export / "sub" / "part.bin") == 0o644
    assert mode(tmp_path / "weights.safetensors") == 0o644
