"""The scale the image tokenizer sees: what it trains on and what ``unitok tokenize`` encodes for
the LM are the same view of a shard image (``tokenizer.data.ImageTransform``), so an object has
the same size in pixels in both."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny_models import TINY_VQ

from tokenizer import VQTokenizer
from tokenizer.data import ImageTransform, TokenizerDataModule
from tokenizer.images import array_to_tensor
from tokenizer.training import TokenizerModule
from unitok.cli import main
from unitok.data.shards import iterate_samples
from unitok.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tokenizer"


def black_square(size: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    """A white ``size`` = (height, width) image with a black side×side square at (top, left)."""
    pixels = np.full((*size, 3), 255, dtype=np.uint8)
    pixels[top:top + side, left:left + side] = 0
    return pixels


def object_size(image: torch.Tensor) -> tuple[int, int]:
    """Height and width in pixels of the dark object in a ``[3, S, S]`` image in [-1, 1]; (0, 0)
    when it is not in the image."""
    dark = image.mean(0) < 0
    rows, columns = dark.any(1).nonzero().flatten(), dark.any(0).nonzero().flatten()
    if not len(rows):
        return 0, 0
    return int(rows[-1] - rows[0] + 1), int(columns[-1] - columns[0] + 1)


def test_an_object_has_the_same_size_in_training_images_and_in_what_tokenize_encodes(tmp_path, monkeypatch):
    """A photo with a 64 px square, as 256 px shards; a 32 px tokenizer (the shards shrink 8x):
    the square is 8 px in every training image and in the image ``unitok tokenize`` encodes."""
    (tmp_path / "photos").mkdir()
    Image.fromarray(black_square((256, 256), top=64, left=32, side=64)).save(tmp_path / "photos" / "square.png")
    assert main(["data", "folder", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "shards"),
                 "--size", "256"]) == 0

    data = TokenizerDataModule(train_shards=str(tmp_path / "shards"), val_shards=str(tmp_path / "shards"),
                               image_size=32, batch_size=8, samples_per_epoch=8, num_workers=0, random_crop=True)
    training_images = next(iter(data.train_dataloader()))

    encoded = []
    original_encode = VQTokenizer.encode

    def recording_encode(self, images):
        encoded.append(images)
        return original_encode(self, images)

    monkeypatch.setattr(VQTokenizer, "encode", recording_encode)
    VQTokenizer(**TINY_VQ).save_pretrained(tmp_path / "tokenizer")  # image_size 32
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tokenizer"), "--shards", str(tmp_path / "shards"),
                 "--out", str(tmp_path / "codes")]) == 0
    (tokenized,) = encoded[-1]

    assert object_size(tokenized) == (8, 8)
    assert [object_size(image) for image in training_images] == [(8, 8)] * 8
    # On square shards the tokenizer trains on exactly what tokenize encodes, or its mirror image.
    mirror = tokenized.flip(-1)
    assert all(torch.equal(image, tokenized) or torch.equal(image, mirror) for image in training_images)
    assert any(torch.equal(image, mirror) for image in training_images)


def test_training_squares_move_along_the_longer_side_at_the_scale_of_tokenize():
    """A wide image: training squares start anywhere along its width, at the central square's scale."""
    wide = {"key": "wide", "image": black_square((128, 256), top=48, left=112, side=32)}
    view = ImageTransform(32, random_crop=True, seed=0)
    heights, lefts = set(), set()
    for _ in range(30):
        image = view(wide)
        heights.add(object_size(image)[0])
        lefts.add(int((image.mean(0) < 0).any(0).nonzero()[0]))
    central = array_to_tensor(ImageTransform(32, random_crop=False).fit(wide["image"]))
    assert object_size(central) == (8, 8)
    assert heights == {8}  # 128 px of height -> 32 px: a quarter, in every training image
    assert len(lefts) > 5


def test_shapes_images_reach_the_tokenizer_unresized(tmp_path):
    """shapes64 trains and tokenizes at 64 px on the 64 px shards ``unitok data shapes`` writes by
    default: training and tokenize see the shard's own pixels, nothing is resized or cropped."""
    config = yaml.safe_load((CONFIGS / "shapes64.yaml").read_text())
    size = config["data"]["image_size"]
    assert size == config["model"]["tokenizer"]["image_size"] == 64 and not config["data"]["random_crop"]
    assert main(["data", "shapes", "--out", str(tmp_path), "--num", "3"]) == 0
    training = ImageTransform(size, random_crop=False, target_view=config["data"]["target_view"])
    tokenize = ImageTransform(size, random_crop=False)
    for sample in iterate_samples(tmp_path):
        image, clean = sample["image"], sample["images"]["clean"]
        assert image.shape == clean.shape == (64, 64, 3)
        trained_on, target = training(sample)
        assert torch.equal(trained_on, array_to_tensor(image)) and torch.equal(target, array_to_tensor(clean))
        assert tokenize.fit(image) is image and tokenize.fit(clean) is clean


def test_training_at_another_size_than_the_tokenizer_is_refused(tmp_path):
    """data.image_size must be the tokenizer's: tokenize encodes at the tokenizer's size."""
    assert main(["data", "shapes", "--out", str(tmp_path / "shards"), "--num", "2", "--size", "32"]) == 0
    data = TokenizerDataModule(train_shards=str(tmp_path / "shards"), val_shards=str(tmp_path / "shards"),
                               image_size=64, batch_size=2, samples_per_epoch=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(UserError, match="data.image_size is 64 but the tokenizer's image_size is 32"):
        trainer.fit(TokenizerModule(tokenizer=TINY_VQ, channels_last=False), datamodule=data)


def test_the_photo_config_trains_on_a_held_out_split_at_its_own_size():
    """photo128's header writes shards at the tokenizer's size with a held-out split, into the
    folders the config reads (``unitok data folder --val-fraction`` writes OUT/train and OUT/val)."""
    text = (CONFIGS / "photo128.yaml").read_text()
    config = yaml.safe_load(text)
    size = config["data"]["image_size"]
    assert size == config["model"]["tokenizer"]["image_size"] == 128
    (command,) = [line for line in text.splitlines() if line.startswith("#") and "unitok data folder" in line]
    words = command.split()
    out = words[words.index("--out") + 1]
    assert words[words.index("--size") + 1] == str(size) and "--val-fraction" in words
    assert (config["data"]["train_shards"], config["data"]["val_shards"]) == (f"{out}/train", f"{out}/val")


def test_the_photo_instructions_write_shards_at_the_photo_config_size():
    """README and docs/training.md write data/photos (what photo128 reads) at photo128's size."""
    size = yaml.safe_load((CONFIGS / "photo128.yaml").read_text())["data"]["image_size"]
    for doc in ("README.md", "docs/training.md"):
        text = (ROOT / doc).read_text().replace("\\\n", " ")  # join continued command lines
        for line in text.splitlines():
            words = line.split()
            if "unitok data folder" in line and "data/photos" in words and "--size" in words:
                assert words[words.index("--size") + 1] == str(size), f"{doc}: {line}"
