"""The Shapes evaluator scores exactly what the analyzer and the caption parser read back."""

import json

from PIL import Image

from unitok.data import shapes
from unitok.evaluation.shapes_eval import attribute_hits, evaluate_shapes, write_report


def perfect_generate(prompts, seed):
    return [shapes.render(shapes.parse_caption(p), 64) for p in prompts]


def perfect_caption(images):
    return [shapes.canonical_caption(shapes.analyze(image)) for image in images]


def test_a_perfect_model_scores_100_percent(tmp_path):
    def perfect_rewrite(prompts):
        return [shapes.canonical_caption(shapes.parse_caption(p)) for p in prompts]

    evaluation = evaluate_shapes(perfect_generate, perfect_caption, num_scenes=40, batch_size=16, progress=False,
                                 rewrite=perfect_rewrite)
    scores = evaluation.as_dict()
    for task in ("text_to_image_canonical", "text_to_image_paraphrased", "captioning", "round_trip",
                 "rewriting_paraphrased"):
        assert scores[task]["n"] == 40
        assert scores[task]["exact"] == 1.0
    paths = write_report(evaluation, tmp_path)
    assert json.loads(paths["json"].read_text())["captioning"]["exact"] == 1.0
    assert "| captioning" in paths["markdown"].read_text() and "| rewriting" in paths["markdown"].read_text()
    assert "rewriting_paraphrased" not in evaluate_shapes(perfect_generate, perfect_caption, num_scenes=2,
                                                          progress=False).as_dict()
    assert Image.open(paths["grid"]).size[0] > 0


def test_wrong_colors_are_counted_per_attribute():
    def recolor(prompts, seed):
        images = []
        for p in prompts:
            scene = shapes.parse_caption(p)
            wrong = [shapes.ShapeObject(o.position, o.size, "red" if o.color != "red" else "blue", o.shape)
                     for o in scene.objects]
            images.append(shapes.render(shapes.Scene(scene.background, tuple(wrong)), 64))
        return images

    scores = evaluate_shapes(recolor, lambda images: ["nonsense"] * len(images), num_scenes=20, progress=False).as_dict()
    t2i = scores["text_to_image_canonical"]
    assert t2i["exact"] == 0.0 and t2i["color"] == 0.0
    assert t2i["shape"] == t2i["size"] == t2i["position"] == t2i["background"] == 1.0
    assert scores["captioning"]["exact"] == 0.0 and scores["captioning"]["unreadable"] == 1.0


def test_unreadable_images_count_as_wrong_but_not_against_each_attribute():
    def every_other_blank(prompts, seed):
        return [shapes.render(shapes.parse_caption(p), 64) if i % 2 == 0 else Image.new("RGB", (64, 64), "white")
                for i, p in enumerate(prompts)]

    def caption(images):
        return [shapes.canonical_caption(scene) if (scene := shapes.analyze(image)) else "" for image in images]

    t2i = evaluate_shapes(every_other_blank, caption, num_scenes=20, progress=False).as_dict()[
        "text_to_image_canonical"]
    assert t2i["exact"] == 0.5 and t2i["unreadable"] == 0.5
    assert all(t2i[attribute] == 1.0 for attribute in ("background", "count", "position", "color", "shape", "size"))


def test_attribute_hits_compare_objects_cell_by_cell():
    truth = shapes.parse_caption("a large red circle at the top and a small blue plus at the center on a white background")
    moved = shapes.parse_caption("a large red circle at the top and a small blue plus at the left on a white background")
    hits = attribute_hits(truth, moved)
    assert hits["count"] == 1.0 and hits["position"] == 0.0 and hits["color"] == 0.5


def test_eval_command_reports_with_the_models_own_sampling_defaults(tmp_path):
    from generation.random_model import random_pipeline
    from unitok.cli import main
    from unitok.lm.model import ScratchConfig

    lm = ScratchConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_positions=160)
    image_tokenizer = dict(image_size=64, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=8,
                           quantizer="fsq", fsq_levels=(4, 4, 3))
    pipe = random_pipeline(lm, image_tokenizer, text_vocab_size=290)
    pipe.register_to_config(default_temperature=0.0, default_guidance_scale=2.0)
    pipe.save_pretrained(tmp_path / "pipe")
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--num", "4", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["settings"]["temperature"], report["settings"]["guidance"]) == (0.0, 2.0)
    assert report["text_to_image_canonical"]["n"] == report["captioning"]["n"] == 4
    assert report["settings"]["rewrite_prompts"] is False and "rewriting_paraphrased" not in report
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--num", "2", "--rewrite-prompts",
                 "--out", str(tmp_path / "eval-rewrite")]) == 0
    report = json.loads((tmp_path / "eval-rewrite" / "report.json").read_text())
    assert report["settings"]["rewrite_prompts"] is True and report["rewriting_paraphrased"]["n"] == 2
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--num", "2", "--temperature", "1.5",
                 "--out", str(tmp_path / "eval2")]) == 0
    assert json.loads((tmp_path / "eval2" / "report.json").read_text())["settings"]["temperature"] == 1.5
