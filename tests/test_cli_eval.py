"""`unitok eval tokenizer` and `unitok eval captions` on shards made here, with tiny random models.

A random model's figures mean nothing, so the CLI tests check the report (files, keys, ranges,
what was skipped); what the figures mean is checked with a model that is perfect by construction
(a captioner and a drawer that look colours up) and in ``test_eval_metrics.py``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import TINY_VQ, tiny_pipeline

from tokenizer.model import VQTokenizer
from unitok.cli import main
from unitok.data.folder_shards import write_folder_shards
from unitok.data.shapes_shards import write_shapes_shards
from unitok.errors import UserError
from unitok.evaluation.caption_eval import CaptionModel, evaluate_captions

# Colour of each image -> its captions (none: an uncaptioned image; a very long one: a prompt the
# tiny model's 64-position context cannot hold beside an image).
PHOTOS = {
    (220, 30, 30): ["a large red circle on white", "a big red disc"],
    (30, 30, 220): ["two blue squares on black"],
    (30, 200, 30): [],
    (240, 240, 40): ["a small yellow triangle at the top"],
    (200, 40, 200): [" ".join(["a purple square next to a purple circle"] * 12)],
    (40, 200, 200): ["a cyan circle in the middle of a gray background"],
}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer") / "vq"
    VQTokenizer(**TINY_VQ, kmeans_init=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "val"
    write_shapes_shards(folder, num=10, size=32, split="val", progress=False)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline(initializer_range=0.3).save_pretrained(folder)
    return folder


def photo_shards(root: Path, with_captions: bool = True) -> Path:
    """One image per colour of ``PHOTOS`` (speckled, so JPEG keeps them apart), with their captions."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (colour, captions) in enumerate(PHOTOS.items()):
        pixels = np.clip(np.array(colour) + rng.integers(-10, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"photo{i}.png")
        lines += [json.dumps({"file": f"photo{i}.png", "caption": caption}) for caption in captions]
    captions_file = root / "captions.jsonl"
    captions_file.write_text("\n".join(lines) + "\n")
    write_folder_shards(images, root / "val", captions=captions_file if with_captions else None, size=32,
                        progress=False)
    return root / "val"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_shards(tmp_path_factory.mktemp("photos"))


# -- eval tokenizer ----------------------------------------------------------------------------


def test_eval_tokenizer_writes_its_report_and_a_one_line_summary(capsys, tokenizer_dir, shapes_val, tmp_path):
    code, out, err = run(capsys, "tokenizer", "--tokenizer", str(tokenizer_dir), "--shards", str(shapes_val),
                         "--batch-size", "4", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and out.startswith("PSNR ")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 10 and report["skipped"] == 0
    assert 0 < report["psnr"] <= report["psnr_cap"] == 100.0
    assert -1 <= report["ssim"] <= 1
    assert report["codebook_size"] == 32 and 1 <= report["codes_used"] <= 32
    assert report["codebook_usage"] == report["codes_used"] / 32
    assert 1 <= report["perplexity"] <= report["codes_used"] + 1e-6
    assert report["settings"]["image_size"] == 32 and report["settings"]["grid"] == [16, 16]
    assert "| PSNR (dB) |" in (tmp_path / "report.md").read_text()
    grid = Image.open(tmp_path / "reconstructions.png")
    assert grid.size == (8 * 66 - 2, 2 * (2 * 66 + 8) - 10)  # 10 images: 2 pairs of rows of 64 px tiles, gaps


def test_eval_tokenizer_num_takes_the_first_images(capsys, tokenizer_dir, shapes_val, tmp_path):
    code, _, err = run(capsys, "tokenizer", "--tokenizer", str(tokenizer_dir), "--shards", str(shapes_val),
                       "--num", "3", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "report.json").read_text())["images"] == 3


# -- eval captions -----------------------------------------------------------------------------


def test_eval_captions_scores_captioning_and_cycle_consistency(capsys, model_dir, photos, tmp_path):
    code, out, err = run(capsys, "captions", "--model", str(model_dir), "--shards", str(photos), "--batch-size", "2",
                         "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and out.startswith("captions: BLEU-4 ")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["captions"]["n"] == 5 and report["cycle"]["n"] == 4
    assert report["skipped"] == {"without a caption": 1, "corrupt": 0, "prompts too long for the model's context": 1}
    for suite in ("captions", "cycle"):
        scores = report[suite]
        assert 0 <= scores["bleu4"] <= 1 and 0 <= scores["rouge_l"] <= 1 and 0 <= scores["cider_d"] <= 10
        assert 0 <= scores["exact"] <= 1
        assert Image.open(tmp_path / f"{suite}.png").size[0] > 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["references"] for s in samples] == [c for c in PHOTOS.values() if c]
    assert sum("read_back" in s for s in samples) == 4 and all("caption" in s for s in samples)
    assert "| captioning:" in (tmp_path / "report.md").read_text()


def test_eval_captions_runs_one_suite_when_asked(capsys, model_dir, photos, tmp_path):
    code, _, err = run(capsys, "captions", "--model", str(model_dir), "--shards", str(photos), "--suites", "captions",
                       "--num", "2", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["captions"]["n"] == 2 and "cycle" not in report
    assert not (tmp_path / "cycle.png").exists()


def test_a_perfect_model_gets_full_marks(tmp_path):
    """A captioner that names each colour's first caption, a drawer that paints each prompt's colour."""
    colour_of = {captions[0]: colour for colour, captions in PHOTOS.items() if captions}

    def named(image: Image.Image) -> str:
        pixel = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        return min(colour_of, key=lambda caption: np.abs(pixel - colour_of[caption]).sum())

    model = CaptionModel(caption=lambda images: [named(image) for image in images],
                         draw=lambda prompts, first: [Image.new("RGB", (16, 16), colour_of[p]) for p in prompts])
    evaluation = evaluate_captions(model, photo_shards(tmp_path), num=10, batch_size=4, progress=False)
    captions, cycle = evaluation.scores["captions"], evaluation.scores["cycle"]
    assert (captions.bleu4, captions.rouge_l, captions.exact) == pytest.approx((1.0, 1.0, 1.0))
    assert 5.0 < captions.cider_d < 10.0  # the red image's second reference lowers its CIDEr-D mean
    assert (cycle.bleu4, cycle.rouge_l, cycle.cider_d, cycle.exact) == pytest.approx((1.0, 1.0, 10.0, 1.0))
    assert evaluation.skipped["without a caption"] == 1


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["tokenizer", "--tokenizer", "{tmp}/nowhere", "--shards", "{shapes}"], "tokenizer folder {tmp}/nowhere does not exist"),
    (["tokenizer", "--tokenizer", "{model}", "--shards", "{shapes}"], "is a UniTok pipeline; its image tokenizer is"),
    (["tokenizer", "--tokenizer", "{model}/lm", "--shards", "{shapes}"], "holds a LlamaForCausalLM, not an image tokenizer"),
    (["tokenizer", "--tokenizer", "{tokenizer}", "--shards", "{tmp}/none"], "no shards found at"),
    (["tokenizer", "--tokenizer", "{tokenizer}", "--shards", "{shapes}", "--num", "0"], "--num must be >= 1, got 0"),
    (["tokenizer", "--tokenizer", "{tokenizer}", "--shards", "{shapes}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["captions", "--model", "{model}", "--shards", "{photos}", "--num", "0"], "--num must be >= 1, got 0"),
    (["captions", "--model", "{model}", "--shards", "{photos}", "--suites", "captions,drawing"],
     "--suites takes a comma-separated subset of captions,cycle"),
    (["captions", "--model", "{tmp}/nowhere", "--shards", "{photos}"], "model folder {tmp}/nowhere does not exist"),
    (["captions", "--model", "{tokenizer}", "--shards", "{photos}"], "is an image tokenizer; evaluate it with"),
    (["captions", "--model", "{model}", "--shards", "{tmp}/none"], "no shards found at"),
    (["captions", "--model", "{model}", "--shards", "{uncaptioned}"], "none of the 6 images in"),
])
def test_errors_are_one_line_messages(capsys, tmp_path, tokenizer_dir, shapes_val, model_dir, photos, args, message):
    places = {"tmp": tmp_path, "shapes": shapes_val, "model": model_dir, "tokenizer": tokenizer_dir, "photos": photos}
    if "{uncaptioned}" in args:
        places["uncaptioned"] = photo_shards(tmp_path, with_captions=False)
    code, out, err = run(capsys, *[arg.format(**places) for arg in args], "--out", str(tmp_path / "out"))
    assert code == 2
    assert message.format(**places) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_eval_shapes_still_refuses_a_model_that_is_not_a_shapes_model(capsys, tmp_path, model_dir):
    code, _, err = run(capsys, "shapes", "--model", str(model_dir), "--num", "2", "--out", str(tmp_path / "out"))
    assert code == 2 and "is not a Shapes model" in err


def test_code_shards_are_refused_for_the_tokenizer_and_captions(capsys, tmp_path, tokenizer_dir, shapes_val, model_dir):
    assert main(["tokenize", "--tokenizer", str(tokenizer_dir), "--shards", str(shapes_val),
                 "--out", str(tmp_path / "codes")]) == 0
    for args in (["tokenizer", "--tokenizer", str(tokenizer_dir)], ["captions", "--model", str(model_dir)]):
        capsys.readouterr()
        code, _, err = run(capsys, *args, "--shards", str(tmp_path / "codes"), "--out", str(tmp_path / "out"))
        assert code == 2 and "holds code shards" in err, err


def test_evaluate_captions_checks_its_suites_and_shards(photos):
    reader = CaptionModel(caption=lambda images: [])
    with pytest.raises(ValueError, match="choose suites"):
        evaluate_captions(reader, photos, suites=["drawing"])
    with pytest.raises(ValueError, match="the cycle suite needs a model that draws"):
        evaluate_captions(reader, photos)
    with pytest.raises(UserError, match="no shards found"):
        evaluate_captions(reader, "/nonexistent/shards", suites=["captions"])
