"""``unitok generate`` and ``unitok caption``: the files they say they write, seeds, errors.

Runs the commands in-process (``unitok.cli.main``) on a tiny random pipeline saved to a folder.
"""

import json
import subprocess
import sys
from pathlib import Path

import image_variants
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_pipeline

from unitok import default_model
from unitok.cli import main
from unitok.errors import UserError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


def generate(capsys, model_dir: Path, *args: str) -> list[Path]:
    assert main(["generate", *args, "--model", str(model_dir), "--no-progress"]) == 0
    return [Path(line) for line in capsys.readouterr().out.splitlines()]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_one_prompt_several_images_to_numbered_files(capsys, model_dir, tmp_path):
    written = generate(capsys, model_dir, "a red circle", "-n", "3", "--out", str(tmp_path / "red.png"))
    assert written == [tmp_path / f"red_{k}.png" for k in range(3)]
    assert all(Image.open(p).size == (16, 16) for p in written)
    assert sorted(tmp_path.iterdir()) == sorted(written)  # no temporary files left behind


def test_grid_puts_a_prompts_images_in_one_file(capsys, model_dir, tmp_path):
    written = generate(capsys, model_dir, "a red circle", "-n", "4", "--grid", "--out", str(tmp_path / "g.png"))
    assert written == [tmp_path / "g.png"]
    assert Image.open(written[0]).size == (32, 32)  # 2 x 2 images


def test_prompts_file_writes_one_file_per_line_and_image(capsys, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  \na blue square at the top\n")
    written = generate(capsys, model_dir, "--prompts-file", str(prompts), "-n", "2", "--out", str(tmp_path / "out"))
    names = ["00000_0.png", "00000_1.png", "00003_0.png", "00003_1.png"]
    assert written == [tmp_path / "out" / n for n in names]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names

    single = generate(capsys, model_dir, "--prompts-file", str(prompts), "--out", str(tmp_path / "one"))
    assert [p.name for p in single] == ["00000.png", "00003.png"]


def test_seed_of_a_prompts_file_line_is_seed_plus_line_times_n(capsys, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na green plus\na blue square at the top\n")
    from_file = generate(capsys, model_dir, "--prompts-file", str(prompts), "-n", "2", "--seed", "10",
                         "--batch-size", "3", "--out", str(tmp_path / "batch"))
    alone = generate(capsys, model_dir, "a blue square at the top", "-n", "2", "--seed", str(10 + 2 * 2),
                     "--out", str(tmp_path / "alone.png"))
    for batched, single in zip(from_file[4:], alone, strict=True):
        np.testing.assert_array_equal(pixels(batched), pixels(single))
    again = generate(capsys, model_dir, "a blue square at the top", "-n", "2", "--seed", "14",
                     "--out", str(tmp_path / "again.png"))
    np.testing.assert_array_equal(pixels(again[0]), pixels(alone[0]))
    assert not np.array_equal(pixels(alone[0]), pixels(alone[1]))


def test_reranking_flags_reach_the_pipeline(capsys, model_dir, tmp_path):
    from generation.pipeline import UniTokPipeline

    pipe = UniTokPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    for judge in ("verdict", "caption"):
        written = generate(capsys, model_dir, "a red circle", "--candidates", "3", "--consensus-weight", "2",
                           "--temperature", "1", "--guidance", "1", "--seed", "5", "--judge", judge,
                           "--out", str(tmp_path / f"{judge}.png"))
        expected = pipe("a red circle", num_candidates=3, consensus_weight=2.0, temperature=1.0, guidance_scale=1.0,
                        judge=judge, generator=[torch.Generator().manual_seed(5)]).images[0]
        np.testing.assert_array_equal(pixels(written[0]), np.asarray(expected))


def test_rewriting_flag_reaches_the_pipeline_and_the_drawn_prompt_is_reported(capsys, model_dir, tmp_path,
                                                                               monkeypatch):
    from generation.pipeline import UniTokPipeline
    from generation.rewriting import PromptRewrite

    def restate_the_second_line(self, prompts, batch_size=16):  # what a trained rewriter would do
        return [PromptRewrite(prompts[0], "", False),
                PromptRewrite("a small red circle at the top on a white background", "", True)][: len(prompts)]

    monkeypatch.setattr(UniTokPipeline, "rewrites", restate_the_second_line)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na tiny red circle up top, white background\n")
    assert main(["generate", "--prompts-file", str(prompts), "--rewrite-prompts", "--out", str(tmp_path / "out"),
                 "--model", str(model_dir), "--no-progress"]) == 0
    reported = [line for line in capsys.readouterr().err.splitlines() if "drawn as" in line]
    assert reported == ["line 2: drawn as 'a small red circle at the top on a white background'"]
    assert main(["generate", "--prompts-file", str(prompts), "--no-rewrite-prompts", "--out", str(tmp_path / "o2"),
                 "--model", str(model_dir), "--no-progress"]) == 0
    assert "drawn as" not in capsys.readouterr().err


def test_caption_prints_one_caption_per_image(capsys, model_dir, tmp_path):
    images = generate(capsys, model_dir, "a red circle", "-n", "3", "--out", str(tmp_path / "x.png"))
    assert main(["caption", *map(str, images), "--model", str(model_dir), "--max-new-tokens", "5"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert len(plain) == 3
    assert main(["caption", *map(str, images), "--json", "--model", str(model_dir), "--max-new-tokens", "5",
                 "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, images))
    assert [r["caption"] for r in rows] == plain


def test_caption_reads_turned_and_transparent_files_as_their_upright_twins(capsys, tmp_path):
    from unitok.data.shapes import Scene, ShapeObject, render

    model_dir = tmp_path / "reader"
    tiny_pipeline(initializer_range=0.3).save_pretrained(model_dir)
    scene = Scene("white", (ShapeObject("top left", "large", "red", "circle"), ShapeObject("right", "small", "cyan", "square")))
    upright = render(scene, 16)
    files = {"upright.png": image_variants.encoded(upright, "PNG"),
             "turned.png": image_variants.encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG"),
             "phone.png": image_variants.exif_turned(upright, "PNG"), "rgba.png": image_variants.transparent(upright)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert main(["caption", *(str(tmp_path / name) for name in files), "--model", str(model_dir), "--json"]) == 0
    captions = {Path(row["image"]).name: row["caption"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert captions["turned.png"] != captions["upright.png"]  # the model sees the turn
    assert captions["phone.png"] == captions["rgba.png"] == captions["upright.png"]


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--model", "{tmp}/nowhere"], "does not exist"),
    (["generate", "x", "--model", "{tmp}"], "not a UniTok pipeline folder"),
    (["generate", "x", "-n", "0", "--model", "{model}"], "-n must be >= 1"),
    (["generate", "x", "--guidance", "nan", "--model", "{model}"], "finite"),
    (["generate", "x", "--guidance", "inf", "--model", "{model}"], "finite"),
    (["generate", "x", "--consensus-weight", "-1", "--model", "{model}"], "--consensus-weight must be"),
    (["generate", "x", "--out", "{tmp}/x.gifx", "--model", "{model}"], "unknown image extension"),
    (["generate", "--model", "{model}"], "exactly one of them"),
    (["generate", "a red circle " * 30, "--model", "{model}"], "too long"),
    (["generate", "x", "--threads", "0", "--model", "{model}"], "--threads must be >= 1"),
    (["generate", "x", "--device", "tpu9", "--model", "{model}"], "unknown device"),
    (["caption", "{tmp}/missing.png", "--model", "{model}"], "cannot read image"),
    (["caption", "{tmp}/notes.txt", "--model", "{model}"], "cannot read image"),
])
def test_bad_input_gives_a_clear_error_and_exit_code_2(capsys, model_dir, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    argv = [a.format(tmp=tmp_path, model=model_dir) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_too_long_line_of_a_prompts_file_names_the_line(capsys, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n" + "a red circle " * 30 + "\n")
    assert main(["generate", "--prompts-file", str(prompts), "--out", str(tmp_path / "o"), "--model", str(model_dir)]) == 2
    assert "line 2 of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing drawn before the check


def test_default_model_is_found_in_the_package_or_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(default_model.resources, "files", lambda package: tmp_path)
    with pytest.raises(UserError, match="--model DIR"):
        default_model.default_model_dir()
    (tmp_path / "assets" / "unitok-shapes").mkdir(parents=True)
    (tmp_path / "assets" / "unitok-shapes" / "model_index.json").write_text("{}")
    assert default_model.default_model_dir() == tmp_path / "assets" / "unitok-shapes"


def test_command_modules_do_not_import_heavy_libraries():
    code = ("import importlib, sys; from unitok.cli import COMMANDS; "
            "[importlib.import_module(c.module) for c in COMMANDS.values()]; "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'lightning') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_models_warnings_go_to_stderr(capsys, model_dir, tmp_path, monkeypatch):
    import generation.pipeline
    from generation.pipeline import UniTokPipeline

    # Every image is a poor match (a consistency is a probability, at most 1).
    monkeypatch.setattr(generation.pipeline, "CONSISTENCY_WARNING", {"verdict": 1.01, "caption": 1.01})

    pipe = UniTokPipeline.from_pretrained(model_dir)
    pipe.configure_runtime("cpu")  # as the CLI runs it
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(["a red circle"], generator=[torch.Generator().manual_seed(0)]).warnings[0]
    assert main(["generate", "a red circle", "--model", str(model_dir), "--no-progress",
                 "--out", str(tmp_path / "w.png")]) == 0
    err = capsys.readouterr().err
    assert expected and [line.removeprefix("warning: ") for line in err.splitlines()
                         if line.startswith("warning: ")] == expected


def test_json_prints_each_files_consistency_and_warnings(capsys, model_dir, tmp_path):
    from generation.pipeline import UniTokPipeline

    pipe = UniTokPipeline.from_pretrained(model_dir)
    pipe.configure_runtime("cpu")
    pipe.set_progress_bar_config(disable=True)
    drawn = pipe(["a red circle"], num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    out = tmp_path / "j.png"
    assert main(["generate", "a red circle", "-n", "2", "--seed", "5", "--json", "--model", str(model_dir),
                 "--no-progress", "--out", str(out)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(tmp_path / "j_0.png"), str(tmp_path / "j_1.png")]
    assert all(Path(r["path"]).is_file() for r in records)
    assert [r["consistency"] for r in records] == [round(c, 4) for c in drawn.consistency]
    assert all(0.0 <= r["consistency"] <= 1.0 for r in records)
    assert all(r["prompt"] == "a red circle" and r["line"] == 0 and r["warnings"] == drawn.warnings[0]
               and r["drawn_prompt"] == drawn.drawn_prompts[0] for r in records)
    assert main(["generate", "a red circle", "-n", "2", "--seed", "5", "--json", "--grid", "--model", str(model_dir),
                 "--no-progress", "--out", str(tmp_path / "g.png")]) == 0
    [grid] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert grid["path"] == str(tmp_path / "g.png") and grid["consistency"] == [round(c, 4) for c in drawn.consistency]


def test_dtype_flag_sets_the_lms_precision_and_says_so(capsys, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "bf16.png"
    assert main(["generate", "a red circle", "--model", str(model_dir), "--no-progress", "--out", str(out),
                 "--dtype", "bfloat16"]) == 0
    assert "in bfloat16" in capsys.readouterr().err and out.is_file()
    monkeypatch.setattr("unitok.precision.cpu_flags", lambda: frozenset({"avx2"}))
    assert main(["generate", "a red circle", "--model", str(model_dir), "--no-progress", "--out", str(out),
                 "--dtype", "auto", "--device", "cpu"]) == 0
    assert "in float32" in capsys.readouterr().err  # no bf16 units: fp32 is this CPU's fastest
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red circle", "--model", str(model_dir), "--dtype", "fp8"])
    assert exit_info.value.code == 2
