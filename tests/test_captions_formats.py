"""`unitok data folder` reads the data layouts users already have: HF imagefolder metadata, class
folders, COCO captions JSON, several folders at once and a held-out split."""

import json

import pytest
from PIL import Image

from unitok.cli import main
from unitok.data.folder_shards import FolderInput, write_folder_shards
from unitok.data.shards import iterate_samples
from unitok.errors import UserError


def _images(root, *names):
    """Tiny photos at ``root/name``, one colour each (so they are told apart after JPEG)."""
    for index, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (10 * index % 250, 120, 200)).save(root / name)
    return root


def _captions_by_file(shards):
    return {s["meta"]["file"]: s["meta"]["captions"] for s in iterate_samples(shards)}


def _folder(argv, capsys):
    """Run `unitok data folder ARGV`: the exit code and what it printed (stdout, then stderr)."""
    code = main(["data", "folder", "--size", "16", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out + out.err


# -- HF imagefolder: metadata.jsonl / metadata.csv ---------------------------------------------


def test_hf_metadata_files_are_picked_up_when_no_captions_are_given(tmp_path, capsys):
    photos = _images(tmp_path / "photos", "beach.jpg", "dogs/rex.png", "dogs/fido.png", "cats/tom.jpg")
    (photos / "metadata.jsonl").write_text(
        '{"file_name": "beach.jpg", "text": "a sandy beach", "split": "train"}\n'
        '{"file_name": "cats/tom.jpg", "text": ["a grey cat", "a cat on a sofa"]}\n')  # a list: reference + paraphrase
    (photos / "dogs" / "metadata.csv").write_text("file_name,text\nrex.png,a black dog\nfido.png,\n")  # relative to dogs/

    code, report = _folder(["--images", photos, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert "captions: HF metadata dogs/metadata.csv, metadata.jsonl" in report
    assert "skipped 0 files" in report  # the metadata files are not images to skip
    assert "images without captions (kept for the image tokenizer, left out of LM training): 1 (dogs/fido.png)" \
        in report
    assert _captions_by_file(tmp_path / "out") == {
        "beach.jpg": ["a sandy beach"], "cats/tom.jpg": ["a grey cat", "a cat on a sofa"],
        "dogs/fido.png": [], "dogs/rex.png": ["a black dog"]}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("metadata.csv", "file_name,label\nx.jpg,3\n", "the header must name the columns file_name,text "
                                                   "(missing text; found ['file_name', 'label'])"),
    ("metadata.jsonl", '{"file_name": "x.jpg", "label": 3}\n', "line 1: expected {\"file_name\": \"...\", "
                                                              "\"text\": \"...\"}; its columns are file_name, label"),
    ("metadata.jsonl", '{"file_name": "y.jpg", "text": "a photo that is not here"}\n',
     "metadata.jsonl names 1 image, none of them in --images"),
])
def test_a_metadata_file_without_its_columns_or_images_is_a_one_line_error(tmp_path, capsys, name, text, message):
    photos = _images(tmp_path / "photos", "x.jpg")
    (photos / name).write_text(text)
    code, report = _folder(["--images", photos, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in report and "Traceback" not in report
    assert not (tmp_path / "out").exists()


# -- caption files: COCO captions JSON ---------------------------------------------------------


def test_coco_json_maps_image_ids_to_files_and_keeps_all_five_captions_in_file_order(tmp_path):
    photos = _images(tmp_path / "coco", "train2017/000000000042.jpg", "train2017/000000000007.jpg")
    captions = {42: [f"forty-two, caption {n}" for n in range(5)], 7: [f"seven, caption {n}" for n in range(5)]}
    annotations = [{"id": 900 - n, "image_id": image_id, "caption": captions[image_id][n]}
                   for n in range(5) for image_id in (7, 42)]  # interleaved, ids unrelated to order
    coco = {"images": [{"id": 42, "file_name": "000000000042.jpg"}, {"id": 7, "file_name": "000000000007.jpg"}],
            "annotations": annotations}
    (tmp_path / "captions.json").write_text(json.dumps(coco))

    write_folder_shards(photos, tmp_path / "out", captions=tmp_path / "captions.json", size=16, progress=False)
    samples = {s["meta"]["file"]: s for s in iterate_samples(tmp_path / "out")}
    for image_id, name in ((42, "train2017/000000000042.jpg"), (7, "train2017/000000000007.jpg")):
        assert samples[name]["caption"] == captions[image_id][0]  # the reference
        assert samples[name]["meta"]["paraphrases"] == captions[image_id][1:]

    coco["images"].append({"id": 7, "file_name": "another.jpg"})
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    with pytest.raises(UserError, match="gives id 7 to 'another.jpg', an earlier entry to '000000000007.jpg'"):
        write_folder_shards(photos, tmp_path / "out2", captions=tmp_path / "captions.json", progress=False)


def test_a_caption_file_that_names_no_image_here_is_refused(tmp_path, capsys):
    photos = _images(tmp_path / "photos", "a.jpg")
    (tmp_path / "other.jsonl").write_text('{"file": "b.jpg", "caption": "a photo of another folder"}\n')
    code, report = _folder(["--images", photos, "--captions", tmp_path / "other.jsonl", "--out", tmp_path / "out"],
                           capsys)
    assert code == 2
    assert "other.jsonl names 1 image, none of them in --images" in report
    assert "(the first is 'b.jpg'); is it the caption file of another folder?" in report


# -- class folders -----------------------------------------------------------------------------


def test_class_template_captions_each_image_from_its_folder_name(tmp_path, capsys):
    photos = _images(tmp_path / "imagenet", "golden_retriever/1.jpg", "tabby-cat/2.png", "loose.jpg")
    code, report = _folder(["--images", photos, "--class-template", "a photo of a {}", "--out", tmp_path / "out"],
                           capsys)
    assert code == 0
    assert "captions: folder names in 'a photo of a {}'" in report
    assert _captions_by_file(tmp_path / "out") == {
        "golden_retriever/1.jpg": ["a photo of a golden retriever"], "tabby-cat/2.png": ["a photo of a tabby cat"],
        "loose.jpg": []}  # no class folder: kept for the tokenizer, uncaptioned
    assert "1 without captions" in report


def test_class_template_must_caption_something_and_hold_one_placeholder(tmp_path, capsys):
    """The template stands in for captions a folder lacks: a folder's own captions (--captions, else
    HF metadata files) come first, and a template that would caption nothing is refused."""
    photos = _images(tmp_path / "photos", "cat/a.jpg")
    (tmp_path / "captions.csv").write_text("file,caption\ncat/a.jpg,my cat\n")
    code, report = _folder(["--images", photos, "--captions", tmp_path / "captions.csv",
                            "--class-template", "a photo of a {}", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "--class-template would caption no image: every folder has captions of its own" in report
    (photos / "metadata.csv").write_text("file_name,text\ncat/a.jpg,my cat\n")
    code, report = _folder(["--images", photos, "--class-template", "a photo of a {}", "--out", tmp_path / "out"],
                           capsys)
    assert code == 2 and "(--captions or HF metadata files), which take precedence" in report
    (photos / "metadata.csv").unlink()
    code, report = _folder(["--images", photos, "--class-template", "a photo of a {class}", "--out", tmp_path / "out"],
                           capsys)
    assert code == 2 and "must contain {} once" in report


# -- several inputs ----------------------------------------------------------------------------


def test_several_folders_each_with_its_own_captions(tmp_path, capsys):
    """Each --captions belongs to the folder before it; the same file name in two folders is fine."""
    first = _images(tmp_path / "first", "cat.jpg", "dog.jpg")
    (tmp_path / "first.jsonl").write_text('{"file": "cat.jpg", "caption": "the first cat"}\n'
                                          '{"file": "owl.jpg", "caption": "an owl never copied"}\n')
    second = _images(tmp_path / "second", "cat.jpg")
    (second / "metadata.jsonl").write_text('{"file_name": "cat.jpg", "text": "the second cat"}\n')
    classes = _images(tmp_path / "classes", "red_fox/cat.jpg")

    code, report = _folder(["--images", first, "--captions", tmp_path / "first.jsonl", "--images", second,
                            "--images", classes, "--class-template", "a {}", "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert "wrote 4 images (16x16 JPEG) in 1 shard" in report
    assert f"  {first}: 2 images; 1 without captions; 0 files skipped; captions: {tmp_path / 'first.jsonl'}" in report
    assert f"  {second}: 1 image; 0 without captions; 0 files skipped; captions: HF metadata metadata.jsonl" in report
    assert f"  {classes}: 1 image; 0 without captions; 0 files skipped; captions: folder names in 'a {{}}'" in report
    assert f"captions matching no image (missing, or a file name found in several folders): 1 ({first}/owl.jpg)" \
        in report  # files are named with their folder once there are several
    samples = list(iterate_samples(tmp_path / "out"))
    assert [s["caption"] for s in samples] == ["the first cat", "", "the second cat", "a red fox"]
    assert len({s["key"] for s in samples}) == 4


def test_captions_before_any_folder_are_refused_with_several_folders(tmp_path, capsys):
    _images(tmp_path / "a", "x.jpg")
    _images(tmp_path / "b", "y.jpg")
    (tmp_path / "c.jsonl").write_text('{"file": "x.jpg", "caption": "x"}\n')
    code, report = _folder(["--captions", tmp_path / "c.jsonl", "--images", tmp_path / "a", "--images", tmp_path / "b",
                            "--out", tmp_path / "out"], capsys)
    assert code == 2 and "put each --captions after the --images or --val-images it captions" in report
    code, report = _folder(["--images", tmp_path, "--images", tmp_path / "a", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "overlaps --images" in report and "would be written twice" in report


# -- held-out split ----------------------------------------------------------------------------


def test_val_fraction_is_a_stable_hash_split_into_train_and_val(tmp_path, capsys):
    photos = _images(tmp_path / "photos", *(f"{n:03d}.png" for n in range(40)))
    code, report = _folder(["--images", photos, "--val-fraction", "0.25", "--out", tmp_path / "out"], capsys)
    assert code == 0
    train, val = _captions_by_file(tmp_path / "out" / "train"), _captions_by_file(tmp_path / "out" / "val")
    assert f"wrote 40 images (16x16 JPEG): {len(train)} train in 1 shard to {tmp_path / 'out' / 'train'}, " \
           f"{len(val)} val in 1 shard to {tmp_path / 'out' / 'val'}" in report
    assert 4 <= len(val) <= 16 and not set(train) & set(val)
    keys = [s["key"] for s in iterate_samples([tmp_path / "out" / "train", tmp_path / "out" / "val"])]
    assert len(set(keys)) == 40  # unique across the two splits

    _images(photos, *(f"new{n:03d}.png" for n in range(20)))  # adding images moves none of the old ones
    assert _folder(["--images", photos, "--val-fraction", "0.25", "--out", tmp_path / "more"], capsys)[0] == 0
    assert set(val) == {f for f in _captions_by_file(tmp_path / "more" / "val") if not f.startswith("new")}
    assert _folder(["--images", photos, "--val-fraction", "0.25", "--seed", "1", "--out", tmp_path / "other"],
                   capsys)[0] == 0
    assert set(_captions_by_file(tmp_path / "other" / "val")) != set(_captions_by_file(tmp_path / "more" / "val"))


def test_val_images_is_a_held_out_folder_with_its_own_captions(tmp_path):
    train = _images(tmp_path / "train", "a.jpg", "b.jpg")
    val = _images(tmp_path / "val", "c.jpg")
    (tmp_path / "val.csv").write_text("file,caption\nc.jpg,a held-out photo\n")
    summary = write_folder_shards([FolderInput(train), FolderInput(val, (tmp_path / "val.csv",), val=True)],
                                  tmp_path / "out", size=16, progress=False)
    assert (summary.written_to("train"), summary.written_to("val")) == (2, 1)
    assert _captions_by_file(tmp_path / "out" / "val") == {"c.jpg": ["a held-out photo"]}
    assert f"  {val}: 1 val; 0 without captions" in summary.report()


@pytest.mark.parametrize(("flags", "message"), [
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1), got 1.0"),
    (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1), got -0.1"),
    (["--val-fraction", "0.001"], "--val-fraction 0.001 holds out none of the 2 images"),
    (["--val-fraction", "0.2", "--val-images", "VAL"], "give --val-fraction or --val-images, not both"),
    (["--val-images", "MISSING"], "--val-images 'MISSING' is not a folder"),
    (["--val-images", "EMPTY"], "--val-images EMPTY holds no jpg, png or webp images"),
])
def test_bad_split_options_are_one_line_errors(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "photos", "a.jpg", "b.jpg")
    _images(tmp_path / "VAL", "c.jpg")
    (tmp_path / "EMPTY").mkdir()
    code, report = _folder(["--images", "photos", *flags, "--out", "out"], capsys)
    assert code == 2 and message in report and "Traceback" not in report
    assert not (tmp_path / "out").exists()
