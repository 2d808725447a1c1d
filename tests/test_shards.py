"""Shapes shards are deterministic and split-disjoint; the shared reader skips and counts corrupt data."""

import io
import tarfile

import numpy as np
import pytest

from unitok.cli import main
from unitok.data import shapes, shapes_language, shapes_tasks
from unitok.data.shapes_shards import scene_split, write_shapes_shards
from unitok.data.shards import ShardWriter, SkipCounter, iterate_samples, read_shards, shard_urls
from unitok.errors import UserError


def _samples(folder):
    return [(s["key"], s["caption"], s["image"].tobytes(), s["meta"]["paraphrases"]) for s in iterate_samples(folder)]


def test_cli_writes_deterministic_shards(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["data", "shapes", "--out", str(tmp_path / name), "--num", "30", "--seed", "7",
                     "--shard-size", "8"]) == 0
    assert "wrote 30 train scenes in 4 shards" in capsys.readouterr().out
    assert len(shard_urls(tmp_path / "a")) == 4
    assert _samples(tmp_path / "a") == _samples(tmp_path / "b")
    write_shapes_shards(tmp_path / "c", num=30, seed=8, progress=False)
    assert _samples(tmp_path / "a") != _samples(tmp_path / "c")


def test_sample_content_matches_its_scene(tmp_path):
    write_shapes_shards(tmp_path, num=40, size=64, seed=0, split="val", progress=False)
    readable = 0
    for sample in iterate_samples(tmp_path):
        meta = sample["meta"]
        scene = shapes.Scene.from_dict(meta["scene"])
        assert sample["image"].shape == (64, 64, 3)  # a faithful rendering, as a user might send it
        readable += shapes.analyze(sample["image"]) == scene
        assert shapes.analyze(sample["images"]["clean"]) == scene
        assert shapes.analyze(sample["images"]["edited"]) == shapes.Scene.from_dict(meta["edit"]["after"])
        assert sample["caption"] == shapes.canonical_caption(scene)
        for prompt in meta["prompts"]:
            normal = shapes_language.parse_prompt(prompt["normal"])
            assert normal.satisfied_by(scene), prompt  # what each prompt states holds for its scene
            assert prompt["family"] in {*shapes_language.TRAIN_FAMILIES, "unknown"}
        assert [v["match"] for v in meta["verify"]] == [True, False, False]
        assert {q["family"] for q in meta["questions"]} <= set(shapes_tasks.QUESTION_FAMILIES)  # none held out
        assert meta["edit"]["family"] in shapes_tasks.INSTRUCTION_FAMILIES
        assert scene_split(scene) == "val"
    assert readable >= 38  # renderings vary (JPEG at quality 50, noise) but stay faithful


def test_train_and_val_scenes_are_disjoint(tmp_path):
    write_shapes_shards(tmp_path / "train", num=3000, seed=0, split="train", progress=False)
    write_shapes_shards(tmp_path / "val", num=200, seed=0, split="val", progress=False)
    train = {s["caption"] for s in iterate_samples(tmp_path / "train")}
    val = {s["caption"] for s in iterate_samples(tmp_path / "val")}
    assert len(val) > 150 and not train & val


def test_training_stream_is_endless_and_cut_into_epochs(tmp_path):
    write_shapes_shards(tmp_path, num=10, seed=0, progress=False)
    stream = read_shards(tmp_path, training=True, samples_per_epoch=25, shuffle_buffer=4)
    assert len(list(stream)) == 25  # resampled past the 10 samples on disk
    with pytest.raises(ValueError, match="samples_per_epoch"):
        read_shards(tmp_path, training=True)


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    with ShardWriter(tmp_path, prefix="mixed") as writer:
        good = np.zeros((8, 8), np.int16)
        buffer = io.BytesIO()
        np.save(buffer, good)
        writer.write({"__key__": "ok1", "codes.npy": buffer.getvalue(), "txt": "fine"})
        writer.write({"__key__": "bad", "png": b"not a png at all", "txt": "broken"})
        writer.write({"__key__": "ok2", "codes.npy": buffer.getvalue(), "txt": "fine too"})
    counter = SkipCounter()
    samples = list(read_shards(tmp_path, training=False, skip_counter=counter))
    assert [s["key"] for s in samples] == ["ok1", "ok2"]
    assert counter.count == 1


def test_interrupted_writer_leaves_only_complete_shards(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, prefix="x", max_count=2) as writer:
        for i in range(3):
            writer.write({"__key__": f"k{i}", "txt": "t"})
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]
    with tarfile.open(tmp_path / "x-000000.tar") as tar:
        assert len(tar.getnames()) == 2


def test_missing_shards_give_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no shards found"):
        shard_urls(tmp_path / "nothing-here")


def test_each_brace_alternative_may_be_a_folder_a_glob_or_a_file(tmp_path):
    for name in ("a", "b"):
        write_shapes_shards(tmp_path / name, num=4, seed=0, shard_size=2, progress=False)
    a, b = shard_urls(tmp_path / "a"), shard_urls(tmp_path / "b")
    assert len(a) == len(b) == 2
    for pattern in ("{a,b}/*.tar", "{a/*.tar,b/*.tar}", "{a,b}", "{a,b/*-000001.tar}"):
        expected = a + (b if "000001" not in pattern else b[1:])
        assert shard_urls(f"{tmp_path}/{pattern}") == expected, pattern
    assert shard_urls([tmp_path / "a", f"{tmp_path}/a/*.tar"]) == a  # each shard once
    with pytest.raises(UserError, match=r"no shards found at '.*/c/\*\.tar' \(from '.*/\{a,c\}/\*\.tar'\)"):
        shard_urls(f"{tmp_path}/{{a,c}}/*.tar")
    with pytest.raises(UserError, match="unbalanced braces"):
        shard_urls(f"{tmp_path}/{{a,b/*.tar")
