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
    assert "not a tokenizer folder" in capsys.readouterr().err
