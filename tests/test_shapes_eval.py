"""The Shapes evaluator scores exactly what the analyzer and the parsers read back, in every suite."""

import itertools
import json

import pytest
from PIL import Image

from unitok.data import shapes, shapes_language, shapes_tasks
from unitok.data.shapes import POSITIONS
from unitok.data.shapes_language import ObjectSpec, Relation, SceneSpec, parse_prompt
from unitok.evaluation.scores import adds_to, attribute_hits
from unitok.evaluation.shapes_eval import ShapesModel, check_reads_shapes, evaluate_shapes, write_report


def satisfying_scene(spec: SceneSpec) -> shapes.Scene:
    """A scene with every stated attribute and relation (the rest filled in), as a perfect drawer makes."""
    free = [p for p in POSITIONS if p not in {o.position for o in spec.objects}]
    open_ = [i for i, o in enumerate(spec.objects) if o.position is None]
    for cells in itertools.permutations(free, len(open_)):
        placed = dict(zip(open_, cells, strict=True))
        objects = tuple(shapes.ShapeObject(o.position or placed[i], o.size or "small", o.color or "red",
                                           o.shape or "circle") for i, o in enumerate(spec.objects))
        if all(r.holds([obj.cell for obj in objects]) for r in spec.relations):
            return shapes.Scene(spec.background or "white", objects)
    raise AssertionError(f"no scene satisfies {spec}")


@pytest.fixture(autouse=True)
def said(monkeypatch):
    """What each prompt the evaluation writes states (typos and all: no parser needed), and the
    word an out-of-domain prompt asks for."""
    specs, unknown = {}, {}
    describe, describe_unknown = shapes_language.describe, shapes_language.describe_unknown

    def recording_describe(*args, **kwargs):
        prompt = describe(*args, **kwargs)
        specs[prompt.text] = prompt.spec
        return prompt

    def recording_describe_unknown(*args, **kwargs):
        prompt, word = describe_unknown(*args, **kwargs)
        specs[prompt.text], unknown[prompt.text] = prompt.spec, word
        return prompt, word

    monkeypatch.setattr(shapes_language, "describe", recording_describe)
    monkeypatch.setattr(shapes_language, "describe_unknown", recording_describe_unknown)
    return specs, unknown


def spec_of(said, prompt: str) -> SceneSpec:
    return said[0].get(prompt) or parse_prompt(prompt)  # canonical captions parse exactly


def perfect_generate(said):
    return lambda prompts, seed: [shapes.render(satisfying_scene(spec_of(said, p)), 64) for p in prompts]


def perfect_caption(images):
    return [shapes.canonical_caption(scene) if (scene := shapes.analyze(image)) else "" for image in images]


def perfect_rewrite(said):
    return lambda prompts: [(shapes_language.normal_form(spec_of(said, p)), said[1].get(p, ""), True) for p in prompts]


@pytest.fixture
def recorded_tasks(monkeypatch):
    """Answers and edits as the evaluation's own generators make them, so an oracle can look them up."""
    answers, edits = {}, {}
    ask, instruct = shapes_tasks.ask, shapes_tasks.instruct

    def recording_ask(*args, **kwargs):
        question = ask(*args, **kwargs)
        answers[(question.text, args[0])] = question.answer
        return question

    def recording_instruct(*args, **kwargs):
        edit = instruct(*args, **kwargs)
        edits[(edit.instruction, edit.before)] = edit.after
        return edit

    monkeypatch.setattr(shapes_tasks, "ask", recording_ask)
    monkeypatch.setattr(shapes_tasks, "instruct", recording_instruct)
    return answers, edits


def test_a_perfect_model_scores_100_percent_in_every_suite(tmp_path, recorded_tasks, said):
    answers, edits = recorded_tasks
    model = ShapesModel(
        generate=perfect_generate(said), caption=perfect_caption, rewrite=perfect_rewrite(said),
        answer=lambda images, questions: [answers[(q, shapes.analyze(image))]
                                          for image, q in zip(images, questions, strict=True)],
        edit=lambda images, instructions, seed: [shapes.render(edits[(text, shapes.analyze(image))], 64)
                                           for image, text in zip(images, instructions, strict=True)])
    evaluation = evaluate_shapes(model, num_scenes=24, batch_size=10, progress=False)
    scores = evaluation.as_dict()
    for key in ("text_to_image/canonical", "text_to_image/held_in_families", "text_to_image/held_out_families",
                "text_to_image/under_specified", "text_to_image/counts", "text_to_image/relations", "round_trip",
                "captioning/own_renderer__box_4x___png", "rewriting/same_meaning", "rewriting/accepted",
                "rewriting/out_of_domain_flagged", "answering/held_out", "answering/held_in", "editing/held_out",
                "editing/held_out_preserved", "editing/held_in"):
        assert scores[key]["exact"] == 1.0, key
        assert scores[key]["n"] >= 20, key
    assert scores["rewriting/hallucination"]["exact"] == scores["rewriting/in_domain_flagged"]["exact"] == 0.0
    assert set(scores["breakdown"]["Question answering by type (held-out wordings)"]) == set(shapes_tasks.QUESTION_KINDS)
    assert set(scores["breakdown"]["Question answering by wording family (held out)"]) == set(
        shapes_tasks.HELD_OUT_QUESTION_FAMILIES)
    assert set(scores["breakdown"]["Editing by wording family (held out, exact target)"]) == set(
        shapes_tasks.HELD_OUT_INSTRUCTION_FAMILIES)
    assert scores["text_to_image/held_out_families"]["held"] == "held out"
    paths = write_report(evaluation, tmp_path)
    assert json.loads(paths["json"].read_text())["answering/held_out"]["exact"] == 1.0
    report = paths["markdown"].read_text()
    assert "| question answering |" in report and "| editing |" in report and "held out" in report
    assert Image.open(paths["grid"]).size[0] > 0 and Image.open(paths["edits"]).size[0] > 0


def test_suites_run_only_where_the_model_has_the_call():
    evaluation = evaluate_shapes(ShapesModel(caption=perfect_caption), num_scenes=3, progress=False)
    assert evaluation.settings["suites"] == ["captioning"]
    assert all(row.task == "captioning" for row in evaluation.rows)
    assert len(evaluation.rows) == 14  # one per rendering variant
    with pytest.raises(ValueError, match="unknown suites"):
        evaluate_shapes(ShapesModel(), suites=("drawing", "dancing"), progress=False)


def test_wrong_colors_are_counted_per_attribute(said):
    def recolor(prompts, seed):
        images = []
        for p in prompts:
            scene = satisfying_scene(spec_of(said, p))
            wrong = [shapes.ShapeObject(o.position, o.size, "red" if o.color != "red" else "blue", o.shape)
                     for o in scene.objects]
            images.append(shapes.render(shapes.Scene(scene.background, tuple(wrong)), 64))
        return images

    scores = evaluate_shapes(ShapesModel(generate=recolor, caption=lambda images: ["nonsense"] * len(images)),
                             num_scenes=20, progress=False, suites=("drawing", "drawing_held_out")).as_dict()
    t2i = scores["text_to_image/canonical"]
    assert t2i["exact"] == 0.0 and t2i["color"] == 0.0
    assert t2i["shape"] == t2i["size"] == t2i["position"] == t2i["background"] == 1.0
    assert scores["text_to_image/counts"]["exact"] == 1.0  # the right number of objects, wrongly coloured
    assert scores["round_trip"]["exact"] == 0.0 and scores["round_trip"]["unreadable"] == 1.0


def test_unreadable_images_count_as_wrong_but_not_against_each_attribute(said):
    def every_other_blank(prompts, seed):
        return [shapes.render(satisfying_scene(spec_of(said, p)), 64) if i % 2 == 0
                else Image.new("RGB", (64, 64), "white") for i, p in enumerate(prompts)]

    scores = evaluate_shapes(ShapesModel(generate=every_other_blank, caption=perfect_caption), num_scenes=20,
                             progress=False, suites=("drawing",)).as_dict()
    t2i = scores["text_to_image/canonical"]
    assert t2i["exact"] == 0.5 and t2i["unreadable"] == 0.5
    assert all(t2i[attribute] == 1.0 for attribute in ("background", "count", "position", "color", "shape", "size"))


def test_a_wrong_answer_and_an_edit_that_touches_the_rest_are_caught(recorded_tasks):
    _, edits = recorded_tasks

    def edit_and_blacken(images, instructions, seed):  # the right edit, but the background always black
        results = []
        for image, text in zip(images, instructions, strict=True):
            after = edits[(text, shapes.analyze(image))]
            results.append(shapes.render(shapes.Scene("black", after.objects), 64))
        return results

    scores = evaluate_shapes(ShapesModel(answer=lambda images, questions: ["seven"] * len(images),
                                         edit=edit_and_blacken), num_scenes=14, progress=False).as_dict()
    assert scores["answering/held_out"]["exact"] == 0.0
    preserved = scores["editing/held_out_preserved"]["exact"]
    assert 0.0 < preserved < 1.0  # background edits to black keep the rest; the others change it


def test_attribute_hits_compare_objects_cell_by_cell():
    truth = shapes_language.parse_caption("a large red circle at the top and a small blue plus at the center on a white background")
    moved = shapes_language.parse_caption("a large red circle at the top and a small blue plus at the left on a white background")
    hits = attribute_hits(truth, moved)
    assert hits["count"] == 1.0 and hits["position"] == 0.0 and hits["color"] == 0.5


def test_a_rewrite_hallucinates_when_it_states_more_or_otherwise():
    prompt = SceneSpec((ObjectSpec(color="red", shape="circle"), ObjectSpec(shape="square")),
                       relations=(Relation("above", (0, 1)),))
    same = SceneSpec((ObjectSpec(shape="square"), ObjectSpec(color="red", shape="circle")),
                     relations=(Relation("below", (0, 1)),))
    fewer = SceneSpec((ObjectSpec(shape="circle"), ObjectSpec(shape="square")))
    assert not adds_to(same, prompt) and not adds_to(fewer, prompt) and not adds_to(None, prompt)
    assert adds_to(SceneSpec(same.objects, "black", same.relations), prompt)  # a background it never asked for
    assert adds_to(SceneSpec((ObjectSpec(color="blue", shape="circle"), ObjectSpec(shape="square"))), prompt)
    assert adds_to(SceneSpec((ObjectSpec(size="large", shape="circle"), ObjectSpec(shape="square"))), prompt)
    assert adds_to(SceneSpec(fewer.objects, relations=(Relation("left of", (0, 1)),)), prompt)
    assert adds_to(SceneSpec(fewer.objects[:1]), prompt)  # an object dropped changes the count


def save_random_pipeline(path) -> None:
    """An untrained 64 px pipeline (greedy, guidance 2 by default): it writes no Shapes caption."""
    from generation.random_model import random_pipeline
    from unitok.lm.model import ScratchConfig

    lm = ScratchConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64,
                       max_positions=192)
    image_tokenizer = dict(image_size=64, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=8,
                           quantizer="fsq", fsq_levels=(4, 4, 3))
    pipe = random_pipeline(lm, image_tokenizer, text_vocab_size=290)
    pipe.register_to_config(default_temperature=0.0, default_guidance_scale=2.0)
    pipe.save_pretrained(path)


def test_a_model_that_writes_no_shapes_caption_is_refused(tmp_path, capsys):
    from unitok.cli import main

    save_random_pipeline(tmp_path / "pipe")  # stands in for a photo model: its captions are not Shapes captions
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "eval")]) == 2
    assert "is not a Shapes model: none of 8 Shapes scenes got a Shapes caption" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()

    def trained_reader(images):  # what a trained Shapes model writes
        return [shapes.canonical_caption(shapes.analyze(image)) for image in images]

    check_reads_shapes(trained_reader, 64, "a Shapes model")  # passes


def test_eval_command_reports_with_the_models_own_sampling_defaults(tmp_path, monkeypatch):
    from unitok.cli import main
    from unitok.evaluation import shapes_eval

    save_random_pipeline(tmp_path / "pipe")
    monkeypatch.setattr(shapes_eval, "check_reads_shapes", lambda *args: None)  # let the random model stand in
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--num", "2", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["settings"]["temperature"], report["settings"]["guidance"]) == (0.0, 2.0)
    assert report["settings"]["suites"] == ["drawing", "drawing_held_out", "captioning", "rewriting", "answering",
                                            "editing"]
    assert report["text_to_image/canonical"]["n"] == report["editing/held_out"]["n"] == 2
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--num", "2", "--temperature", "1.5",
                 "--suites", "answering", "--out", str(tmp_path / "eval2")]) == 0
    report = json.loads((tmp_path / "eval2" / "report.json").read_text())
    assert report["settings"]["temperature"] == 1.5 and report["settings"]["suites"] == ["answering"]
    assert main(["eval", "shapes", "--model", str(tmp_path / "pipe"), "--suites", "drawing,dancing"]) == 2


def test_a_models_own_flags_are_scored_against_whether_its_drawings_are_right(said):
    """A drawer that blanks every other image and flags exactly those (and every prompt for what the
    domain lacks) flags no right drawing, every wrong one and every out-of-domain prompt."""
    _, unknown = said
    draw = perfect_generate(said)

    def flagging(prompts, seed):
        images = [image if i % 2 == 0 else Image.new("RGB", (64, 64), "white")
                  for i, image in enumerate(draw(prompts, seed))]
        return images, [i % 2 == 1 or p in unknown for i, p in enumerate(prompts)]

    scores = evaluate_shapes(ShapesModel(generate_flagged=flagging, caption=perfect_caption), num_scenes=12,
                             batch_size=5, progress=False, suites=("drawing", "drawing_held_out")).as_dict()
    assert 0.0 < scores["text_to_image/canonical"]["exact"] < 1.0  # drawn (and scored) through generate_flagged
    assert scores["consistency/right_flagged"]["exact"] == 0.0 and scores["consistency/right_flagged"]["n"] > 20
    assert scores["consistency/wrong_flagged"]["exact"] == 1.0 and scores["consistency/wrong_flagged"]["n"] > 20
    out_of_domain = scores["consistency/out_of_domain_flagged"]
    assert (out_of_domain["n"], out_of_domain["exact"], out_of_domain["held"]) == (12, 1.0, "held out")
    # A model that only draws reports no flags.
    plain = evaluate_shapes(ShapesModel(generate=draw, caption=perfect_caption), num_scenes=4, progress=False,
                            suites=("drawing",)).as_dict()
    assert not any(key.startswith("consistency/") for key in plain)
