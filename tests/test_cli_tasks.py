"""``unitok ask`` and ``unitok edit``: single requests and JSONL batch files, in order, the same
answers and edits as the Python API, and one-line errors (exit 2) for every bad input.

Runs in-process on a tiny random pipeline (its answers and edits are arbitrary but deterministic).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_pipeline

from unitok.cli import main
from unitok.data import shapes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline(initializer_range=0.3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(model_dir):
    """The saved model loaded and run as the CLI runs it (bf16 on a CPU with bf16 units, else fp32)."""
    from generation.pipeline import UniTokPipeline

    loaded = UniTokPipeline.from_pretrained(model_dir)
    loaded.configure_runtime("cpu")
    return loaded


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = folder / f"scene{i}.png"
        shapes.render(shapes.random_scene(rng), 64).save(path)
        paths.append(path)
    return paths


def run(capsys, model_dir, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--model", str(model_dir), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


QUESTIONS = ["how many objects are there?", "what colour is the background?", "is there a red square?"]


def test_ask_prints_the_pipelines_answer(capsys, model_dir, pipeline, images):
    code, out, _ = run(capsys, model_dir, "ask", str(images[0]), QUESTIONS[0])
    assert code == 0
    assert out == pipeline.answer([Image.open(images[0]).convert("RGB")], [QUESTIONS[0]])[0] + "\n"


def test_ask_questions_file_answers_every_line_in_order(capsys, model_dir, pipeline, images, tmp_path):
    lines = [{"image": str(images[i]), "question": QUESTIONS[i]} for i in range(3)]
    file = write_jsonl(tmp_path / "q.jsonl", [lines[0], "", lines[1], lines[2]])
    code, out, _ = run(capsys, model_dir, "ask", "--questions-file", str(file), "--batch-size", "2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    expected = pipeline.answer([Image.open(p).convert("RGB") for p in images], QUESTIONS)
    assert records == [{"image": str(images[i]), "question": QUESTIONS[i], "answer": expected[i]} for i in range(3)]


def test_a_relative_image_path_is_found_beside_the_file(capsys, model_dir, images, tmp_path, monkeypatch):
    file = write_jsonl(images[0].parent / "beside.jsonl", [{"image": images[1].name, "question": QUESTIONS[0]}])
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, model_dir, "ask", "--questions-file", str(file))
    assert code == 0 and json.loads(out)["image"] == images[1].name


def test_edit_writes_the_pipelines_edit(capsys, model_dir, pipeline, images, tmp_path):
    out_path = tmp_path / "edited.png"
    code, out, _ = run(capsys, model_dir, "edit", str(images[0]), "make the background blue", "--out", str(out_path))
    assert code == 0 and out.splitlines() == [str(out_path)]
    expected = pipeline.edit([Image.open(images[0]).convert("RGB")], ["make the background blue"]).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out_path)), np.asarray(expected))
    assert sorted(tmp_path.iterdir()) == [out_path]  # no temporary file left behind


def test_edits_file_writes_one_file_per_line_numbered_from_zero(capsys, model_dir, pipeline, images, tmp_path):
    instructions = ["remove the red square", "make the background black"]
    file = write_jsonl(tmp_path / "e.jsonl", [{"image": str(images[0]), "instruction": instructions[0]}, "  ",
                                              {"image": str(images[2]), "instruction": instructions[1]}])
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, model_dir, "edit", "--edits-file", str(file), "--out", str(out_dir), "--batch-size", "1")
    assert code == 0
    assert out.splitlines() == [str(out_dir / "00000.png"), str(out_dir / "00002.png")]
    expected = pipeline.edit([Image.open(images[0]).convert("RGB"), Image.open(images[2]).convert("RGB")],
                             instructions).images
    for path, image in zip(out.splitlines(), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(image))


def test_sampled_edits_follow_the_seed(capsys, model_dir, images, tmp_path):
    args = ["edit", str(images[0]), "add a small green circle", "--temperature", "1"]
    run(capsys, model_dir, *args, "--seed", "3", "--out", str(tmp_path / "a.png"))
    run(capsys, model_dir, *args, "--seed", "3", "--out", str(tmp_path / "b.png"))
    run(capsys, model_dir, *args, "--seed", "4", "--out", str(tmp_path / "c.png"))
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reranked_edits_are_the_pipelines(capsys, model_dir, pipeline, images, tmp_path):
    import torch

    args = ["edit", str(images[1]), "add a small green circle", "--temperature", "1", "--candidates", "3"]
    code, _, _ = run(capsys, model_dir, *args, "--seed", "5", "--out", str(tmp_path / "a.png"))
    assert code == 0
    expected = pipeline.edit([Image.open(images[1]).convert("RGB")], ["add a small green circle"], temperature=1.0,
                             num_candidates=3, generator=[torch.Generator().manual_seed(5)]).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(expected))
    for flags, message in [(["--candidates", "2", "--temperature", "0"], "needs sampling"),
                           (["--candidates", "0"], "--candidates must be in [1, 64]")]:
        code, out, err = run(capsys, model_dir, "edit", str(images[1]), "add a circle", *flags,
                             "--out", str(tmp_path / "b.png"))
        assert code == 2 and out == "" and message in err and "Traceback" not in err


@pytest.mark.parametrize("lines, message", [
    (["{not json"], "line 1 of"),
    ([{"image": "IMAGE", "question": "q?"}, "[1, 2]"], "line 2 of"),
    ([{"question": "q?"}], '"image" must be a string'),
    ([{"image": "IMAGE", "question": 3}], '"question" must be a string'),
    ([{"image": "IMAGE", "question": "  "}], "the question is empty"),
    ([{"image": "IMAGE", "question": "q?"}, {"image": "missing.png", "question": "q?"}], "line 2 of"),
])
def test_bad_questions_file_lines_are_named(capsys, model_dir, images, tmp_path, lines, message):
    lines = [json.dumps(line).replace("IMAGE", str(images[0])) if isinstance(line, dict) else line for line in lines]
    file = write_jsonl(tmp_path / "bad.jsonl", lines)
    code, out, err = run(capsys, model_dir, "ask", "--questions-file", str(file))
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_edits_file_lines_are_named(capsys, model_dir, images, tmp_path):
    file = write_jsonl(tmp_path / "bad.jsonl", [{"image": str(images[0]), "instruction": "remove it"},
                                               {"image": str(images[0]), "question": "wrong field"}])
    code, _, err = run(capsys, model_dir, "edit", "--edits-file", str(file), "--out", str(tmp_path / "o"))
    assert code == 2 and "line 2 of" in err and '"instruction" must be a string' in err
    assert not (tmp_path / "o").exists()  # nothing written before every line was checked


@pytest.mark.parametrize("command", ["ask", "edit"])
def test_bad_single_requests_fail_with_one_line(capsys, model_dir, images, tmp_path, command):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    for image, text, message in [(str(tmp_path / "missing.png"), "q", "no image file"),
                                 (str(garbage), "q", "cannot read image"),
                                 (str(images[0]), "   ", "is empty")]:
        code, out, err = run(capsys, model_dir, command, image, text, *(["--out", str(tmp_path / "e.png")]
                                                                        if command == "edit" else []))
        assert code == 2 and out == "", (image, text)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unreadable_image_in_a_file_names_its_line(capsys, model_dir, images, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    file = write_jsonl(tmp_path / "q.jsonl", [{"image": str(images[0]), "question": "q?"},
                                             {"image": str(garbage), "question": "q?"}])
    code, _, err = run(capsys, model_dir, "ask", "--questions-file", str(file))
    assert code == 2 and "line 2 of" in err and "cannot read image" in err


def test_a_model_without_the_task_says_so(capsys, tmp_path, images):
    from tiny_models import TINY_IMAGE_TOKENIZER, TINY_LM

    from generation.random_model import random_pipeline

    older = tmp_path / "older"
    random_pipeline(TINY_LM, TINY_IMAGE_TOKENIZER, text_vocab_size=290,
                    special_names=("boi", "eoi", "uncond", "rewrite")).save_pretrained(older)
    code, _, err = run(capsys, older, "ask", str(images[0]), "how many objects are there?")
    assert code == 2 and "cannot answer questions" in err
    code, _, err = run(capsys, older, "edit", str(images[0]), "remove it", "--out", str(tmp_path / "e.png"))
    assert code == 2 and "cannot edit images" in err
