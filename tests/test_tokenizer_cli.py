"""The command line: ``unitok tokenizer fit/export`` and ``unitok tokenize`` on shards made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_models import TINY_VQ

from tokenizer import VQTokenizer
from tokenizer.images import array_to_tensor
from unitok.cli import main
from unitok.data.shapes_shards import write_shapes_shards
from unitok.data.shards import iterate_samples

TINY = TINY_VQ


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_shapes_shards(root / "train", num=24, size=32, seed=0, split="train", shard_size=16, progress=False)
    write_shapes_shards(root / "val", num=8, size=32, seed=0, split="val", progress=False)
    return root


def tiny_config(root: Path) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "val_check_interval": 2,
                    "check_val_every_n_epoch": None, "enable_progress_bar": False, "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True}}]},
        "model": {"tokenizer": TINY, "warmup_steps": 1, "channels_last": False},
        "data": {"train_shards": str(root / "train"), "val_shards": str(root / "val"), "image_size": 32,
                 "batch_size": 4, "samples_per_epoch": 8, "num_workers": 0},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_print_config_shows_the_shapes64_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["image_size"] == 64 and printed["trainer"]["num_sanity_val_steps"] == 0


def test_fit_then_export_writes_a_folder_that_loads(shards, tmp_path):
    import shutil

    for split in ("train", "val"):
        shutil.copytree(shards / split, tmp_path / split)
    assert main(["tokenizer", "fit", "--config", str(tiny_config(tmp_path))]) == 0
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert main(["tokenizer", "export", str(checkpoint), str(tmp_path / "export")]) == 0
    model = VQTokenizer.from_pretrained(tmp_path / "export").eval()
    assert model.grid_size == (16, 16) and model.codebook_size == 32
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.quantize._codebook.embed, saved["tokenizer.quantize._codebook.embed"])
    assert not list(tmp_path.glob(".export.*")), "the staging folder was left behind"


def test_fit_on_shards_without_a_readable_image_is_a_one_line_error(shards, tmp_path, capsys):
    """The training stream resamples and skips corrupt members: without a check it would search forever."""
    import shutil

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "data-000000.tar").write_bytes(b"not a tar file" * 64)
    shutil.copytree(shards / "val", tmp_path / "val")
    assert main(["tokenizer", "fit", "--config", str(tiny_config(tmp_path))]) == 2
    assert "every member was skipped as corrupt" in capsys.readouterr().err


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenizer", "export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err


def test_tokenize_writes_code_shards_with_captions_and_meta(shards, tmp_path):
    torch.manual_seed(0)
    model = VQTokenizer(**TINY).eval()
    model.encode(torch.zeros(2, 3, 32, 32))  # k-means init, as a trained tokenizer would have
    model.save_pretrained(tmp_path / "shapes-tiny")
    out = tmp_path / "codes"
    assert main(["tokenize", "--tokenizer", str(tmp_path / "shapes-tiny"), "--shards", str(shards / "train"),
                 "--out", str(out), "--batch-size", "5"]) == 0
    originals = list(iterate_samples(shards / "train"))
    coded = list(iterate_samples(out))
    assert [s["key"] for s in coded] == [s["key"] for s in originals]
    for original, sample in zip(originals, coded, strict=True):
        assert sample["codes"].shape == (16, 16) and sample["codes"].dtype == np.int16
        assert sample["caption"] == original["caption"]
        assert sample["meta"]["scene"] == original["meta"]["scene"]
        assert sample["meta"]["tokenizer"] == "shapes-tiny" and sample["meta"]["codebook_size"] == 32
    expected = model.encode(array_to_tensor(originals[0]["image"])[None])[0].numpy()
    np.testing.assert_array_equal(coded[0]["codes"], expected)


def test_tokenize_rejects_a_folder_that_is_not_a_tokenizer(shards, tmp_path, capsys):
    assert main(["tokenize", "--tokenizer", str(tmp_path), "--shards", str(shards / "train"), "--out", str(tmp_path / "o")]) == 2
    assert "is not an image tokenizer folder (no config.json)" in capsys.readouterr().err


def test_two_folder_shard_sets_tokenize_into_one_set_with_unique_keys(tmp_path, capsys):
    """Both sets number their samples from 00000000; the second set's keys become KEY-1."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for shade in range(3):
            Image.new("RGB", (40, 40), (80 * shade, 0, 0)).save(tmp_path / name / f"{shade}.png")
        (tmp_path / f"{name}.jsonl").write_text('{"file": "0.png", "caption": "a dark square"}\n')
        assert main(["data", "folder", "--images", str(tmp_path / name), "--captions", str(tmp_path / f"{name}.jsonl"),
                     "--out", str(tmp_path / "shards" / name), "--size", "32"]) == 0
    VQTokenizer(**TINY).save_pretrained(tmp_path / "vq")
    capsys.readouterr()
    assert main(["tokenize", "--tokenizer", str(tmp_path / "vq"), "--shards", f"{tmp_path / 'shards'}/{{a,b}}/*.tar",
                 "--out", str(tmp_path / "codes")]) == 0
    report = capsys.readouterr().out
    assert "tokenized 6 images" in report
    assert "keys an earlier sample had (shard sets numbered alike): 3, renamed KEY-1, KEY-2, ..." in report
    assert "images without captions (left out of LM training): 4" in report
    keys = [sample["key"] for sample in iterate_samples(tmp_path / "codes")]
    assert keys == ["00000000", "00000001", "00000002", "00000000-1", "00000001-1", "00000002-1"]
