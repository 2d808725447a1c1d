"""`unitok data folder`: a user's own photos and captions become shards; bad files are skipped and listed."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from unitok.cli import main
from unitok.data.folder_shards import (
    SKIP_CORRUPT,
    SKIP_EMPTY,
    SKIP_NOT_IMAGE,
    SKIP_TOO_LARGE,
    SKIP_UNSUPPORTED,
    load_square_rgb,
    write_folder_shards,
)
from unitok.data.shards import iterate_samples
from unitok.errors import UserError

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width×height: a decompression bomb as Pillow sees it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.fixture
def coco_mini(tmp_path):
    """A COCO-shaped folder: train2017/ with captions, val2017/ without, plus broken files."""
    root = tmp_path / "coco-mini"
    train, val, annotations = root / "train2017", root / "val2017", root / "annotations"
    for folder in (train, val, annotations):
        folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    (train / "000000000001.jpg").write_bytes(_jpeg_bytes(_halves(96, 64), exif=exif.tobytes()))
    (train / "000000000002.JPEG").write_bytes(_jpeg_bytes(Image.new("CMYK", (70, 50), (255, 0, 0, 0))))
    rgba = Image.new("RGBA", (48, 48), (0, 0, 0, 0))  # fully transparent: must come out white
    rgba.save(train / "000000000003.png")
    Image.new("RGB", (40, 30), (30, 160, 40)).save(train / "000000000004.webp", lossless=True)
    sixteen = np.full((40, 40), 32896, np.uint16)  # 16-bit grey 0x8080: mid-grey, not white
    Image.fromarray(sixteen).save(train / "000000000005.png")
    Image.new("RGB", (64, 48), (90, 90, 90)).save(val / "000000000101.jpg", quality=95)
    Image.new("P", (20, 20), 3).save(val / "000000000102.png")  # smaller than --size: upscaled
    good = _jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    (val / "000000000103.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (val / "000000000104.png").write_bytes(b"")
    (val / "000000000105.jpg").write_text("this is not an image\n")
    (val / "000000000106.png").write_bytes(_png_claiming_size(100_000, 100_000))
    (val / "notes.txt").write_text("ignored\n")
    (root / ".DS_Store").write_bytes(b"\0\0")  # hidden: not even listed
    caption_sets = {1: ["A red and blue flag.", "Two colours side by side.", "A flag, turned."],
                    2: ["A cyan card."], 3: ["A blank white square."], 4: ["Green."],
                    5: ["Grey."], 999: ["A photo that was never copied."]}
    coco = {"info": {}, "licenses": [], "images": [], "annotations": []}
    for image_id, texts in caption_sets.items():
        name = {2: "000000000002.JPEG", 3: "000000000003.png", 4: "000000000004.webp",
                5: "000000000005.png"}.get(image_id, f"{image_id:012d}.jpg")
        coco["images"].append({"id": image_id, "file_name": name, "width": 1, "height": 1})
        coco["annotations"] += [{"id": len(coco["annotations"]), "image_id": image_id, "caption": text}
                                for text in texts]
    (annotations / "captions_train2017.json").write_text(json.dumps(coco))
    return root


def test_cli_turns_a_coco_folder_into_shards_and_reports_every_skip(coco_mini, tmp_path, capsys):
    out, captions = tmp_path / "shards", coco_mini / "annotations" / "captions_train2017.json"
    argv = ["data", "folder", "--images", str(coco_mini), "--out", str(out), "--size", "32",
            "--captions", str(captions), "--shard-size", "4"]
    assert main(argv) == 0
    report = capsys.readouterr().out
    print(report)
    assert "wrote 7 images (32x32 JPEG) in 2 shards" in report
    assert f"  {coco_mini}: 7 images; 2 without captions; 5 files skipped; captions: {captions}" in report
    assert "skipped 5 files:" in report
    assert f"{SKIP_CORRUPT}: 1 (val2017/000000000103.jpg)" in report
    assert f"{SKIP_EMPTY}: 1 (val2017/000000000104.png)" in report
    assert f"{SKIP_NOT_IMAGE}: 1 (val2017/000000000105.jpg)" in report
    assert f"{SKIP_TOO_LARGE}: 1 (val2017/000000000106.png)" in report
    assert f"{SKIP_UNSUPPORTED}: 1 (val2017/notes.txt)" in report  # the captions file is not listed
    assert "images without captions (kept for the image tokenizer, left out of LM training): " \
        "2 (val2017/000000000101.jpg, " in report
    assert "captions matching no image (missing, or a file name found in several folders): 1 (000000000999.jpg)" \
        in report
    assert "upscaled, will look soft): 2 (train2017/000000000004.webp, val2017/000000000102.png)" in report

    samples = {s["meta"]["file"]: s for s in iterate_samples(out)}
    assert list(samples) == sorted(samples)  # deterministic: sorted relative paths
    assert len(samples) == 7 and all(s["image"].shape == (32, 32, 3) for s in samples.values())

    flag = samples["train2017/000000000001.jpg"]
    assert flag["caption"] == "A red and blue flag."
    assert flag["meta"]["captions"][0] == flag["caption"]
    assert flag["meta"]["paraphrases"] == ["Two colours side by side.", "A flag, turned."]
    assert (flag["meta"]["width"], flag["meta"]["height"]) == (64, 96)  # upright size
    top, bottom = flag["image"][2].mean(axis=0), flag["image"][-3].mean(axis=0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # EXIF turn applied: red on top

    cyan = samples["train2017/000000000002.JPEG"]["image"].reshape(-1, 3).mean(axis=0)
    assert cyan[0] < 60 and cyan[1] > 200 and cyan[2] > 200  # CMYK converted
    assert samples["train2017/000000000003.png"]["image"].min() > 250  # alpha composited on white
    assert samples["train2017/000000000004.webp"]["caption"] == "Green."
    assert abs(samples["train2017/000000000005.png"]["image"].mean() - 128) < 3  # 16-bit scaled
    assert samples["val2017/000000000101.jpg"]["caption"] == ""
    assert samples["val2017/000000000101.jpg"]["meta"]["paraphrases"] == []


def test_jsonl_and_csv_captions_match_by_path_or_file_name(tmp_path):
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "b").mkdir()
    for rel in ("a/cat.jpg", "b/cat.jpg", "a/dog.png", "b/owl.jpg"):
        Image.new("RGB", (120, 80), (200, 100, 50)).save(images / rel)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"file": "a/cat.jpg", "caption": "a cat"}\n\n'
                     '{"file": "./b\\\\cat.jpg", "caption": "another cat"}\n'
                     '{"file": "dog.png", "caption": "a dog"}\n'
                     '{"file": "dog.png", "caption": "a  dog"}\n'  # same caption once spaces are tidied
                     '{"file": "cat.jpg", "caption": "which cat?"}\n')  # ambiguous: never guessed
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text('file,caption,source\na/cat.jpg,"a cat, sitting",me\nowl.jpg,an owl,me\n')

    summary = write_folder_shards(images, tmp_path / "from-jsonl", captions=jsonl, size=16, progress=False)
    captions = {s["meta"]["file"]: s["meta"]["captions"] for s in iterate_samples(tmp_path / "from-jsonl")}
    assert captions == {"a/cat.jpg": ["a cat"], "a/dog.png": ["a dog"], "b/cat.jpg": ["another cat"],
                        "b/owl.jpg": []}
    assert summary.without_captions == ["b/owl.jpg"]
    assert summary.captions_without_images == ["cat.jpg"]

    summary = write_folder_shards(images, tmp_path / "from-csv", captions=csv_file, size=16, progress=False)
    captions = {s["meta"]["file"]: s["caption"] for s in iterate_samples(tmp_path / "from-csv")}
    assert captions == {"a/cat.jpg": "a cat, sitting", "a/dog.png": "", "b/cat.jpg": "", "b/owl.jpg": "an owl"}
    assert summary.written == 4 and summary.skipped == {}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.jsonl", '{"file": "x.jpg", "caption": "ok"}\n{"file": "y.jpg", "caption": \n', "bad.jsonl line 2: not valid JSON"),
    ("bad.jsonl", '{"file": "x.jpg", "text": "no caption key"}\n', "bad.jsonl line 1: expected"),
    ("bad.csv", "path,caption\nx.jpg,hi\n", "bad.csv line 1: the header must name the columns file,caption"),
    ("bad.csv", "file,caption\nx.jpg,hi\ny.jpg\n", "bad.csv line 3: expected a file and a caption"),
    ("bad.json", '{"images": [{"id": 1}], "annotations": []}', "images[0] needs 'id' and 'file_name'"),
    ("bad.json", '{"images": [],\n "annotations": [}', "bad.json line 2 column"),
    ("bad.txt", "x.jpg hi\n", "unknown format"),
])
def test_bad_caption_files_are_one_line_user_errors(tmp_path, capsys, name, text, message):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "x.jpg")
    (tmp_path / name).write_text(text)
    argv = ["data", "folder", "--images", str(tmp_path / "images"), "--captions", str(tmp_path / name),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_pixel_limit_and_stale_shards_and_empty_folders(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (200, 100)).save(images / "big.jpg")
    Image.new("RGB", (100, 100)).save(images / "small.jpg")
    summary = write_folder_shards(images, tmp_path / "out", size=16, max_pixels=15_000, progress=False)
    assert summary.written == 1 and summary.skipped == {SKIP_TOO_LARGE: ["big.jpg"]}

    with pytest.raises(UserError, match="already holds 1 'data-\\*.tar' shards"):
        write_folder_shards(images, tmp_path / "out", size=16, progress=False)

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("no images here")
    assert main(["data", "folder", "--images", str(tmp_path / "junk"), "--out", str(tmp_path / "none")]) == 2
    assert "holds no jpg, png or webp images; other files: 1 (readme.md)" in capsys.readouterr().err
    (tmp_path / "junk" / "photo.jpg").write_text("not a photo")
    with pytest.raises(UserError, match=f"none of the 1 image could be read \\({SKIP_NOT_IMAGE}: 1\\)"):
        write_folder_shards(tmp_path / "junk", tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()
    assert main(["data", "folder", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_large_jpeg_decodes_at_reduced_scale_but_records_its_true_size(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "wide.jpg").write_bytes(_jpeg_bytes(_halves(1200, 800)))
    write_folder_shards(tmp_path / "images", tmp_path / "out", size=32, progress=False)
    (sample,) = iterate_samples(tmp_path / "out")
    assert sample["image"].shape == (32, 32, 3)
    assert (sample["meta"]["width"], sample["meta"]["height"]) == (1200, 800)
    left, right = sample["image"][:, 2].mean(axis=0), sample["image"][:, -3].mean(axis=0)
    assert left[0] > 150 > left[2] and right[2] > 150 > right[0]  # center crop keeps both halves


def test_broken_colour_profile_or_exif_block_does_not_cost_the_photo(tmp_path):
    (tmp_path / "images").mkdir()
    photo = Image.new("RGB", (40, 40), RED)
    (tmp_path / "images" / "icc.jpg").write_bytes(_jpeg_bytes(photo, icc_profile=b"not a profile"))
    (tmp_path / "images" / "exif.jpg").write_bytes(_jpeg_bytes(photo, exif=b"Exif\0\0II*\0\xff\xff\xff\x7f"))
    summary = write_folder_shards(tmp_path / "images", tmp_path / "out", size=16, progress=False)
    assert summary.written == 2 and summary.skipped == {}
    for sample in iterate_samples(tmp_path / "out"):
        assert np.abs(sample["image"].reshape(-1, 3).mean(axis=0) - RED).max() < 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_table_agrees_with_pillows_exif_transpose(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5).convert("RGB")
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "a.png", exif=exif.tobytes())
    expected = ImageOps.fit(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "a.png")), (16, 16),
                            method=Image.Resampling.BICUBIC)
    image, width, height = load_square_rgb(tmp_path / "images" / "a.png", 16)
    assert (width, height) == ((6, 8) if orientation >= 5 else (8, 6))  # 5-8 turn by 90°
    assert np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16)).max() <= 2
