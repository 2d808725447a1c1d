"""Validation previews of the LM (``model.val_previews``, ``unitok.evaluation.val_previews``): at each
validation, ``unitok lm fit`` draws the captions of the first validation samples and captions their
codes, into ``RUN/samples/step_{step:06d}.png`` and ``.jsonl``.

A from-scratch LM of one layer over the pipeline tests' tiny FSQ tokenizer (48 codes on a 4x4 grid
of 16x16 images), trained two steps: one epoch, so one validation at step 2.
"""

import json

import pytest
import yaml
from PIL import Image
from test_lm import write_code_shards

from unitok.cli import main as unitok_main
from unitok.errors import UserError
from unitok.lm.module import UnifiedLMModule

CODEBOOK, GRID, SIZE = 48, (4, 4), 16  # TINY_IMAGE_TOKENIZER's


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(train folder, val folder, the val samples' captions in shard order)."""
    folder = tmp_path_factory.mktemp("codes")
    write_code_shards(folder / "train", 8, grid=GRID, codebook=CODEBOOK)
    val = write_code_shards(folder / "val", 4, grid=GRID, codebook=CODEBOOK, seed=1)
    return folder / "train", folder / "val", [caption for caption, _ in val]


def fit(tmp_path, shards, geometry: dict, val_previews: int, action: str = "fit", checkpoint=None) -> None:
    """``unitok lm fit`` (or ``validate``) of two steps, validating at the end of the epoch;
    ``geometry``: ``image_tokenizer``, or ``codebook_size`` and ``grid``."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0}}],
        },
        "model": {
            **geometry, "bpe_vocab_size": 300, "warmup_steps": 1, "val_previews": val_previews,
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                        "intermediate_size": 64, "max_positions": 64},
        },
        "data": {"train_shards": str(shards[0]), "val_shards": str(shards[1]), "batch_size": 4,
                 "samples_per_epoch": 8, "num_workers": 0},
    }
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(config))
    extra = [] if checkpoint is None else ["--ckpt_path", str(checkpoint)]
    assert unitok_main(["lm", action, "--config", str(path), *extra]) == 0


def test_each_validation_writes_the_drawings_and_captions_of_the_first_val_samples(tmp_path, shards, image_tokenizer):
    fit(tmp_path, shards, {"image_tokenizer": str(image_tokenizer)}, val_previews=3)

    samples = tmp_path / "run" / "samples"
    assert sorted(path.name for path in samples.iterdir()) == ["step_000002.jsonl", "step_000002.png"]  # no sanity check
    records = [json.loads(line) for line in (samples / "step_000002.jsonl").read_text().splitlines()]
    assert [record["reference"] for record in records] == shards[2][:3]
    assert all(set(record) == {"key", "reference", "caption"} and isinstance(record["caption"], str)
               for record in records)
    with Image.open(samples / "step_000002.png") as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == (3 * SIZE, 2 * SIZE)  # a column per sample: its image above its drawing

    # The same weights give the same files: fixed samples, seeds and greedy captions. (`validate`
    # counts steps from 0: Lightning restores the step count only to go on fitting.)
    fit(tmp_path, shards, {"image_tokenizer": str(image_tokenizer)}, val_previews=3, action="validate",
        checkpoint=tmp_path / "ckpt" / "last.ckpt")
    for suffix in (".jsonl", ".png"):
        assert (samples / f"step_000000{suffix}").read_bytes() == (samples / f"step_000002{suffix}").read_bytes()


def test_without_an_image_tokenizer_only_the_captions_are_written(tmp_path, shards):
    fit(tmp_path, shards, {"codebook_size": CODEBOOK, "grid": list(GRID)}, val_previews=2)
    samples = tmp_path / "run" / "samples"
    assert [path.name for path in samples.iterdir()] == ["step_000002.jsonl"]
    assert len((samples / "step_000002.jsonl").read_text().splitlines()) == 2


def test_zero_previews_write_nothing(tmp_path, shards, image_tokenizer):
    fit(tmp_path, shards, {"image_tokenizer": str(image_tokenizer)}, val_previews=0)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file() and not (tmp_path / "run" / "samples").exists()


def test_a_negative_count_is_refused():
    with pytest.raises(UserError, match="val_previews"):
        UnifiedLMModule(codebook_size=CODEBOOK, grid=GRID, tokenizer_captions="unused", val_previews=-1)
