"""``UniTokPipeline``: drawing, captioning, save/load round trip, assembly from parts, dtypes.

The pipeline is tiny and random (``generation.random_model``): a 2-layer Llama, a 16x16 VQ
tokenizer with a 4x4 code grid, a BPE trained on Shapes captions.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_IMAGE_TOKENIZER, tiny_pipeline

from generation.pipeline import UniTokPipeline
from generation.step_hook import Interrupted, step_hook
from tokenizer.model import VQTokenizer
from unitok.errors import UserError
from unitok.lm.image_positions import detached_image_positions, image_position_table
from unitok.lm.model import save_unified_lm

PROMPTS = ["a red circle", "a large blue square at the top left on a white background"]


@pytest.fixture(scope="module")
def pipe() -> UniTokPipeline:
    pipeline = tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def older() -> UniTokPipeline:
    """A pipeline whose vocabulary predates verification, questions and edits (judged by likelihood)."""
    pipeline = tiny_pipeline(special_names=("boi", "eoi", "uncond", "rewrite"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def seeded(count: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(count)]


def test_call_returns_images_of_every_output_type(pipe):
    pil = pipe(PROMPTS, num_images_per_prompt=2, generator=seeded(4)).images
    assert len(pil) == 4 and all(isinstance(i, Image.Image) and i.size == (16, 16) for i in pil)
    arrays = pipe(PROMPTS, num_images_per_prompt=2, generator=seeded(4), output_type="np").images
    assert arrays.shape == (4, 16, 16, 3) and 0.0 <= arrays.min() and arrays.max() <= 1.0
    np.testing.assert_allclose(arrays * 255, np.stack([np.asarray(i) for i in pil]), atol=1.0)
    codes = pipe(PROMPTS, num_images_per_prompt=2, generator=seeded(4), output_type="latent").images
    assert codes.shape == (4, 4, 4) and int(codes.max()) < 48
    tensors = pipe(PROMPTS[0], output_type="pt", return_dict=False)[0]
    assert tensors.shape == (1, 3, 16, 16)


def test_images_do_not_depend_on_batch_size_or_call_grouping(pipe):
    whole = pipe(PROMPTS, num_images_per_prompt=2, guidance_scale=[2.0, 4.0], generator=seeded(4),
                 output_type="latent", batch_size=16).images
    one_at_a_time = pipe(PROMPTS, num_images_per_prompt=2, guidance_scale=[2.0, 4.0], generator=seeded(4),
                         output_type="latent", batch_size=1).images
    second_alone = pipe(PROMPTS[1], num_images_per_prompt=2, guidance_scale=4.0, generator=seeded(2, base=2),
                        output_type="latent").images
    assert torch.equal(whole, one_at_a_time)
    assert torch.equal(whole[2:], second_alone)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "UniTokPipeline"
    assert index["image_tokenizer"] == ["tokenizer.model", "VQTokenizer"]
    assert (tmp_path / "pipe" / "lm" / "unitok_vocabulary.json").is_file()

    loaded = UniTokPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vocabulary == pipe.vocabulary
    assert not loaded.lm.training and not loaded.image_tokenizer.training
    before = pipe(PROMPTS, generator=seeded(2), output_type="np").images
    after = loaded(PROMPTS, generator=seeded(2), output_type="np").images
    np.testing.assert_array_equal(before, after)
    images = pipe(PROMPTS, generator=seeded(2)).images
    assert loaded.caption(images, max_new_tokens=5) == pipe.caption(images, max_new_tokens=5)


def test_an_lm_with_an_image_position_table_round_trips_in_full_and_half_precision(tmp_path):
    pipe = tiny_pipeline(image_positions=True)
    pipe.set_progress_bar_config(disable=True)
    table = image_position_table(pipe.lm)
    torch.nn.init.normal_(table.weight, std=1.0)
    before = pipe(PROMPTS, generator=seeded(2), output_type="latent").images
    with detached_image_positions(pipe.lm):
        assert not torch.equal(pipe(PROMPTS, generator=seeded(2), output_type="latent").images, before)
    for dtype in (torch.float32, torch.float16):
        pipe.lm.to(dtype)
        pipe.save_pretrained(tmp_path / "pipe")
        assert (tmp_path / "pipe" / "lm" / "image_positions.safetensors").is_file()
        loaded = UniTokPipeline.from_pretrained(tmp_path / "pipe")
        loaded.set_progress_bar_config(disable=True)
        assert image_position_table(loaded.lm).weight.dtype == torch.float32  # loads in fp32 with the LM
        torch.testing.assert_close(image_position_table(loaded.lm).weight, table.weight.float())
        if dtype == torch.float32:
            assert torch.equal(loaded(PROMPTS, generator=seeded(2), output_type="latent").images, before)


def test_from_parts_assembles_a_pipeline_and_checks_the_parts(pipe, tmp_path):
    save_unified_lm(pipe.lm, pipe.text_tokenizer, pipe.vocabulary, tmp_path / "lm")
    pipe.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    assembled = UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer")
    assembled.set_progress_bar_config(disable=True)
    torch.testing.assert_close(assembled(PROMPTS[0], generator=seeded(1), output_type="latent").images,
                               pipe(PROMPTS[0], generator=seeded(1), output_type="latent").images)

    VQTokenizer(**{**TINY_IMAGE_TOKENIZER, "fsq_levels": (5, 5, 3)}).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="75 codes"):
        UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "other")
    with pytest.raises(UserError, match="not an image tokenizer folder"):
        UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "missing")


def test_sampling_defaults_travel_with_the_model_and_calls_can_override_them(pipe, tmp_path):
    save_unified_lm(pipe.lm, pipe.text_tokenizer, pipe.vocabulary, tmp_path / "lm")
    pipe.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    greedy = UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer", default_guidance_scale=2.0,
                                       default_temperature=0.0, default_consensus_weight=4.0)
    greedy.save_pretrained(tmp_path / "greedy")
    assert json.loads((tmp_path / "greedy" / "model_index.json").read_text())["default_temperature"] == 0.0
    loaded = UniTokPipeline.from_pretrained(tmp_path / "greedy")
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.config.default_guidance_scale, loaded.config.default_temperature) == (2.0, 0.0)
    assert loaded.sampling_settings().consensus_weight == 4.0 and pipe.sampling_settings().consensus_weight == 0.0

    def codes(pipeline, **settings):
        return pipeline(PROMPTS, generator=seeded(2), output_type="latent", **settings).images

    # The saved defaults are what an unqualified call uses; explicit arguments win over them.
    assert torch.equal(codes(loaded), codes(pipe, guidance_scale=2.0, temperature=0.0))
    assert torch.equal(codes(loaded, temperature=1.0, guidance_scale=3.0), codes(pipe))
    settings = loaded.sampling_settings(top_k=5)
    assert (settings.options.temperature, settings.options.top_k, settings.guidance_scale) == (0.0, 5, 2.0)
    with pytest.raises(UserError, match="temperature"):
        UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer", default_temperature=-1.0)


def test_load_refuses_a_vocabulary_that_does_not_fit(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    path = tmp_path / "pipe" / "lm" / "unitok_vocabulary.json"
    data = json.loads(path.read_text())
    data["codebook_size"] += 1
    data.pop("layout")
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="do not match"):
        UniTokPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(UserError, match="does not exist"):
        UniTokPipeline.from_pretrained(tmp_path / "nowhere")


def test_half_precision_folder_loads_in_fp32_and_half_runs_with_an_fp32_image_tokenizer(pipe, tmp_path):
    pipe.lm.to(torch.float16)
    try:
        pipe.save_pretrained(tmp_path / "half")
    finally:
        pipe.lm.to(torch.float32)
    loaded = UniTokPipeline.from_pretrained(tmp_path / "half")
    assert loaded.lm.dtype == torch.float32

    loaded.to("cpu", torch.bfloat16)
    assert loaded.lm.dtype == torch.bfloat16 and loaded.image_tokenizer.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    images = loaded(PROMPTS, generator=seeded(2)).images
    assert len(loaded.caption(images, max_new_tokens=4)) == 2


def test_configure_runtime_says_what_it_chose_and_why(pipe, monkeypatch):
    monkeypatch.setattr("unitok.precision.cpu_flags", lambda: frozenset({"avx2"}))
    line = pipe.configure_runtime("cpu")
    assert "cpu" in line and "float32 (this CPU has no bf16 units" in line and "sdpa" in line
    assert pipe.lm.dtype == torch.float32
    monkeypatch.setattr("unitok.precision.cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert "bfloat16 (this CPU has bf16 units" in pipe.configure_runtime("cpu") and pipe.lm.dtype == torch.bfloat16
    assert "float32 (as asked)" in pipe.configure_runtime("cpu", "float32") and pipe.lm.dtype == torch.float32


def test_bad_requests_are_user_errors(pipe):
    for kwargs in (dict(num_images_per_prompt=0), dict(guidance_scale=float("nan")), dict(temperature=-1.0),
                   dict(top_p=2.0), dict(output_type="gif"), dict(guidance_scale=[1.0, 2.0])):
        with pytest.raises(UserError):
            pipe("a red circle", **kwargs)
    with pytest.raises(UserError, match="too long"):
        pipe("a red circle " * 30)
    with pytest.raises(UserError, match="one per image"):
        pipe(PROMPTS, generator=seeded(3))


@pytest.mark.parametrize(("model", "room"), [("older", 45), ("pipe", 44)])
def test_the_longest_prompt_accepted_fits_the_context_when_reranked(model, room, request):
    from unitok.lm.sequences import rewrite_budget
    from unitok.lm.text_tokenizer import encode_text

    pipe = request.getfixturevalue(model)
    # The tiny LM's 64 positions: [<boi>, 16 codes, <eoi>, prompt, <eos>] for a judge by likelihood,
    # [<boi>, 16 codes, <eoi>, prompt, <|verify|>, <|yes|>] for one that verifies.
    longest, too_long = "x" * room, "x" * (room + 1)  # the tiny BPE has no merge of "xx": one id per x
    assert len(encode_text(pipe.text_tokenizer, too_long)) == room + 1
    assert len(pipe.encode_prompt(longest)) == room
    with pytest.raises(UserError, match=f"room for {room} prompt tokens"):
        pipe.encode_prompt(too_long)
    images = pipe(longest, num_candidates=2, temperature=1.0, generator=seeded(1), output_type="latent").images
    assert images.shape == (1, 4, 4)
    # Rewriting it too: [longest <|rewrite|>] is room + 1 positions, so a rewrite runs to what is left.
    assert rewrite_budget(pipe.vocabulary, 64) == 64 - room - 1
    rewritten = pipe(longest, rewrite_prompts=True, num_candidates=2, temperature=1.0, generator=seeded(1),
                     output_type="latent")
    assert rewritten.images.shape == (1, 4, 4) and len(pipe.encode_prompt(rewritten.drawn_prompts[0])) <= room


def test_reranking_keeps_the_candidate_the_model_most_surely_says_shows_its_prompt(pipe):
    from generation.rerank import candidate_generators, verification_scores

    settings = dict(temperature=1.0, guidance_scale=1.0, output_type="latent")
    result = pipe(PROMPTS, num_candidates=4, generator=seeded(2), **settings)
    derived = candidate_generators(seeded(2), rows=2, candidates=4)
    drawn = pipe([p for p in PROMPTS for _ in range(4)], generator=derived, num_candidates=1, **settings).images
    text_ids = [pipe.encode_prompt(p) for p in PROMPTS for _ in range(4)]
    scores = verification_scores(pipe.lm, pipe.vocabulary, drawn, text_ids).view(2, 4)
    assert torch.equal(result.images, drawn.view(2, 4, 4, 4)[torch.arange(2), scores.argmax(1)])
    # Each image reports that verdict on itself as its consistency with the prompt.
    torch.testing.assert_close(torch.tensor(result.consistency), scores.max(1).values)
    assert all(0.0 <= c <= 1.0 for c in result.consistency) and len(result.warnings) == 2


def test_the_caption_judge_reranks_a_verifying_model_by_likelihood_and_is_a_saved_default(pipe, older, tmp_path):
    from generation.rerank import (
        candidate_generators,
        caption_consistency,
        prompt_log_likelihood,
        verification_scores,
    )

    settings = dict(temperature=1.0, guidance_scale=1.0, output_type="latent")
    result = pipe(PROMPTS, num_candidates=4, generator=seeded(2), judge="caption", **settings)
    derived = candidate_generators(seeded(2), rows=2, candidates=4)
    drawn = pipe([p for p in PROMPTS for _ in range(4)], generator=derived, num_candidates=1, **settings).images
    text_ids = [pipe.encode_prompt(p) for p in PROMPTS for _ in range(4)]
    likelihood = prompt_log_likelihood(pipe.lm, pipe.vocabulary, drawn, text_ids).view(2, 4)
    verdicts = verification_scores(pipe.lm, pipe.vocabulary, drawn, text_ids).view(2, 4)
    assert (likelihood.argmax(1) != verdicts.argmax(1)).any()  # the two judges pick differently here
    best = likelihood.argmax(1)
    assert torch.equal(result.images, drawn.view(2, 4, 4, 4)[torch.arange(2), best])
    # The image reports the judge's own reading as its consistency: the probability of the prompt's
    # least likely token as its caption, not the verdict.
    picked = drawn.view(2, 4, 4, 4)[torch.arange(2), best]
    reading, _ = caption_consistency(pipe.lm, pipe.vocabulary, picked, text_ids[::4])
    torch.testing.assert_close(torch.tensor(result.consistency), reading)
    assert not torch.allclose(reading, verdicts[torch.arange(2), best])

    save_unified_lm(pipe.lm, pipe.text_tokenizer, pipe.vocabulary, tmp_path / "lm")
    pipe.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer",
                              default_judge="caption").save_pretrained(tmp_path / "judged")
    loaded = UniTokPipeline.from_pretrained(tmp_path / "judged")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(PROMPTS, num_candidates=4, generator=seeded(2), **settings).images, result.images)
    assert pipe.sampling_settings().judge == "verdict" and older.sampling_settings().judge == "caption"
    with pytest.raises(UserError, match="judge must be one of verdict, caption"):
        pipe(PROMPTS, judge="vibes")
    with pytest.raises(UserError, match="no <\\|verify\\|> token"):
        older(PROMPTS, judge="verdict")


def test_reranking_keeps_the_candidate_whose_prompt_is_likeliest_as_its_caption(older):
    pipe = older
    from generation.rerank import candidate_generators, prompt_log_likelihood

    settings = dict(temperature=1.0, guidance_scale=1.0, output_type="latent")
    chosen = pipe(PROMPTS, num_candidates=4, generator=seeded(2), **settings).images
    # The same candidates drawn by hand from the derived generators, scored, best kept.
    derived = candidate_generators(seeded(2), rows=2, candidates=4)
    drawn = pipe([p for p in PROMPTS for _ in range(4)], generator=derived, num_candidates=1, **settings).images
    text_ids = [pipe.encode_prompt(p) for p in PROMPTS for _ in range(4)]
    scores = prompt_log_likelihood(pipe.lm, pipe.vocabulary, drawn, text_ids).view(2, 4)
    assert torch.equal(chosen, drawn.view(2, 4, 4, 4)[torch.arange(2), scores.argmax(1)])
    # Still per image: batching and call grouping change nothing.
    assert torch.equal(chosen, pipe(PROMPTS, num_candidates=4, generator=seeded(2), batch_size=3, **settings).images)
    assert torch.equal(chosen[1:], pipe(PROMPTS[1], num_candidates=4, generator=seeded(1, base=1), **settings).images)
    with pytest.raises(UserError, match="temperature > 0"):
        pipe(PROMPTS, num_candidates=2, temperature=0.0)
    with pytest.raises(UserError, match="num_candidates"):
        pipe(PROMPTS, num_candidates=0)


INSTRUCTIONS = ["make the background black", "remove the red circle"]


def test_edits_with_candidates_keep_the_likeliest_edit_the_candidates_agree_on(pipe):
    from generation.rerank import (
        candidate_generators,
        consensus_log_counts,
        edit_log_likelihood,
        read_candidates,
    )

    images = pipe(PROMPTS, generator=seeded(2), temperature=1.0).images
    settings = dict(temperature=1.0, output_type="latent")
    chosen = pipe.edit(images, INSTRUCTIONS, num_candidates=4, consensus_weight=2.0, generator=seeded(2),
                       **settings).images
    # The same candidates edited by hand from the derived generators, scored, best kept.
    derived = candidate_generators(seeded(2), rows=2, candidates=4)
    edited = pipe.edit([i for i in images for _ in range(4)], [t for t in INSTRUCTIONS for _ in range(4)],
                       num_candidates=1, generator=derived, **settings).images
    sources = pipe.encode_images(images).repeat_interleave(4, dim=0)
    instruction_ids = [pipe.encode_prompt(t) for t in INSTRUCTIONS for _ in range(4)]
    likelihood = edit_log_likelihood(pipe.lm, pipe.vocabulary, sources, instruction_ids, edited)
    agreement = consensus_log_counts(read_candidates(pipe.lm, pipe.vocabulary, edited, batch_size=8), 4)
    scores = (likelihood + 2.0 * agreement).view(2, 4)
    assert torch.equal(chosen, edited.view(2, 4, 4, 4)[torch.arange(2), scores.argmax(1)])
    # A likelihood does not depend on what else is in the batch (padding), and is one of a grid.
    alone = torch.cat([edit_log_likelihood(pipe.lm, pipe.vocabulary, sources[i : i + 1], instruction_ids[i : i + 1],
                                           edited[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(alone, likelihood)
    assert bool((likelihood < 0).all())
    # Per image: batching and call grouping change nothing.
    assert torch.equal(chosen, pipe.edit(images, INSTRUCTIONS, num_candidates=4, consensus_weight=2.0,
                                         generator=seeded(2), batch_size=3, **settings).images)
    assert torch.equal(chosen[1:], pipe.edit(images[1:], INSTRUCTIONS[1:], num_candidates=4, consensus_weight=2.0,
                                             generator=seeded(1, base=1), **settings).images)
    with pytest.raises(UserError, match="need sampling"):
        pipe.edit(images, INSTRUCTIONS, num_candidates=2, temperature=0.0)
    with pytest.raises(UserError, match="num_candidates"):
        pipe.edit(images, INSTRUCTIONS, num_candidates=0, temperature=1.0)


def test_edit_defaults_travel_with_the_model_and_a_greedy_call_is_one_edit(pipe, tmp_path):
    save_unified_lm(pipe.lm, pipe.text_tokenizer, pipe.vocabulary, tmp_path / "lm")
    pipe.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer", default_edit_temperature=1.0,
                              default_edit_num_candidates=3, default_edit_consensus_weight=2.0
                              ).save_pretrained(tmp_path / "sampled")
    loaded = UniTokPipeline.from_pretrained(tmp_path / "sampled")
    loaded.set_progress_bar_config(disable=True)
    settings = loaded.edit_settings()
    assert (settings.options.temperature, settings.num_candidates, settings.consensus_weight) == (1.0, 3, 2.0)
    assert pipe.edit_settings().options.greedy and pipe.edit_settings().num_candidates == 1

    images = pipe(PROMPTS, generator=seeded(2), temperature=1.0).images

    def codes(pipeline, **settings):
        return pipeline.edit(images, INSTRUCTIONS, generator=seeded(2), output_type="latent", **settings).images

    assert torch.equal(codes(loaded), codes(pipe, temperature=1.0, num_candidates=3, consensus_weight=2.0))
    # temperature 0 asks for the greedy edit, of which there is one, whatever the saved candidates.
    assert torch.equal(codes(loaded, temperature=0.0), codes(pipe))
    with pytest.raises(UserError, match="need sampling"):
        UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer", default_edit_num_candidates=2)


def test_consensus_counts_identical_readings_per_image():
    from generation.rerank import consensus_log_counts, reads_as_its_prompt

    readings = [[1, 2], [1, 2], [3], [1, 2], [3], [4], [4], [4]]
    expected = torch.tensor([3, 3, 1, 3, 1, 3, 3, 3], dtype=torch.float32).log()
    torch.testing.assert_close(consensus_log_counts(readings, 4), expected)
    torch.testing.assert_close(consensus_log_counts(readings, 2), torch.tensor([2, 2, 1, 1, 1, 1, 2, 2]).float().log())
    with pytest.raises(ValueError, match="groups of 3"):
        consensus_log_counts(readings, 3)
    prompts = [[3]] * 4 + [[5]] * 4  # the first image's prompt is a reading of one candidate, the second's is not
    assert reads_as_its_prompt(readings, prompts, 4).tolist() == [True] * 4 + [False] * 4


def test_consensus_weight_adds_the_log_count_of_each_candidates_reading(older):
    pipe = older
    from generation.rerank import candidate_generators, prompt_log_likelihood, read_candidates, rerank
    from unitok.lm.sequences import reading_budget

    settings = dict(temperature=1.0, guidance_scale=1.0, output_type="latent")
    derived = candidate_generators(seeded(3), rows=3, candidates=6)
    prompts = [*PROMPTS, PROMPTS[0]]
    drawn = pipe([p for p in prompts for _ in range(6)], generator=derived, num_candidates=1, **settings).images
    text_ids = [pipe.encode_prompt(p) for p in prompts for _ in range(6)]
    likelihood = prompt_log_likelihood(pipe.lm, pipe.vocabulary, drawn, text_ids).view(3, 6)

    def reading(codes: torch.Tensor) -> list[int]:  # a stand-in captioner: 3 possible readings...
        if torch.equal(codes, drawn[2 * 6 + 4]):
            return text_ids[0]  # ...and, for one candidate of the third image, its prompt word for word
        return [int(codes.sum()) % 3]

    readings = [reading(grid) for grid in drawn]
    groups = drawn.view(3, 6, 4, 4)
    counts = torch.tensor([[sum(reading(o) == reading(c) for o in group) for c in group] for group in groups])
    assert (counts[:2] != counts[:2, :1]).any()  # the readings differ, so the weight can change the choice
    for weight in (0.0, 1.0, 1e6):
        chosen = rerank(pipe.lm, pipe.vocabulary, drawn, text_ids, candidates=6, consensus_weight=weight,
                        batch_size=5, readings=readings)
        bonus = weight * counts.float().log()
        bonus[2] = 0.0  # the third image's prompt is one of its readings: likelihood alone
        best = (likelihood + bonus).argmax(1)
        assert torch.equal(chosen, groups[torch.arange(3), best]), weight
    # The pipeline reranks the same way, with the model's own readings of the candidates...
    real = read_candidates(pipe.lm, pipe.vocabulary, drawn, batch_size=5)
    expected = rerank(pipe.lm, pipe.vocabulary, drawn, text_ids, candidates=6, consensus_weight=2.0, readings=real)
    chosen = pipe(prompts, num_candidates=6, consensus_weight=2.0, generator=seeded(3), batch_size=5, **settings)
    assert torch.equal(chosen.images, expected)
    # ...which run to what the tiny LM's context leaves after [<boi> 16 codes <eoi>].
    assert reading_budget(pipe.vocabulary, 64) == 64 - 18 and max(map(len, real)) <= 64 - 18
    with pytest.raises(UserError, match="consensus_weight"):
        pipe(PROMPTS, num_candidates=2, temperature=1.0, consensus_weight=-1.0)


def test_prompt_log_likelihood_and_consistency_read_the_captioning_probabilities(pipe):
    """The caption judge's score is the prompt's (then EOS's) summed log-probability as the image's
    caption; its consistency, the probability of the least likely of those tokens."""
    from generation.rerank import caption_consistency, prompt_log_likelihood

    vocab = pipe.vocabulary
    codes = torch.randint(0, vocab.codebook_size, (3, *vocab.grid), generator=torch.Generator().manual_seed(0))
    text_ids = [pipe.encode_prompt(p) for p in (PROMPTS[0], PROMPTS[1], PROMPTS[0])]
    scores = prompt_log_likelihood(pipe.lm, vocab, codes, text_ids, batch_size=2)
    consistency, positions = caption_consistency(pipe.lm, vocab, codes, text_ids, batch_size=2)
    for grid, ids, score, reading, at in zip(codes, text_ids, scores, consistency, positions, strict=True):
        bos = [] if vocab.bos_id is None else [vocab.bos_id]
        sequence = [*bos, vocab.boi_id, *vocab.to_lm_ids(grid).flatten().tolist(), vocab.eoi_id, *ids, vocab.eos_id]
        with torch.no_grad():
            log_probs = pipe.lm(torch.tensor([sequence])).logits[0].float().log_softmax(-1)
        start = len(sequence) - len(ids) - 1
        token_log_probs = torch.stack([log_probs[t - 1, sequence[t]] for t in range(start, len(sequence))])
        torch.testing.assert_close(score, token_log_probs.sum(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(reading, token_log_probs.min().exp(), atol=1e-5, rtol=1e-4)
        assert at == int(token_log_probs.argmin())  # an index into ids; len(ids) is the EOS


def test_a_poor_match_names_the_word_the_model_least_reads_in_its_image(pipe):
    from generation.rewriting import PromptRewrite, drawing_warnings, word_at

    tokenizer = pipe.text_tokenizer
    ids = pipe.encode_prompt("a large purple hexagon, top left")
    pieces = [tokenizer.decode([i]) for i in ids]
    inside = next(k for k, piece in enumerate(pieces) if "x" in piece)  # a token inside "hexagon", or all of it
    assert word_at(tokenizer, ids, inside) == "hexagon"  # a piece of a word names the whole word
    assert word_at(tokenizer, ids, len(ids) - 1) == "left" and word_at(tokenizer, ids, len(ids)) == ""
    notes = drawing_warnings(PromptRewrite("p", "", False), [0.9, 0.01, 0.02], 0.1, ["large", "hexagon", ""])
    assert notes == ["image 1 matches the prompt poorly: it does not read 'hexagon' in it (consistency 0.01)",
                     "image 2 matches the prompt poorly: it shows more than the prompt says (consistency 0.02)"]
    assert drawing_warnings(PromptRewrite("p", "", False), [0.3], 0.5) == [
        "image 0 matches the prompt poorly (consistency 0.30)"]  # a verdict names no word


class Restating(UniTokPipeline):
    """A pipeline whose LM restates the first prompt it is given and leaves the others as they are
    (a trained rewriter's behaviour, without training one)."""

    restatement = "a large red circle at the top on a black background"

    def rewrites(self, prompts, batch_size=16):
        from generation.rewriting import PromptRewrite

        self.asked = list(prompts)
        return [PromptRewrite(self.restatement, "", True), *(PromptRewrite(p, "", False) for p in prompts[1:])]


def test_rewriting_draws_and_reranks_from_the_lms_restatement_of_each_prompt(pipe):
    from unitok.lm.sequences import rewrite_budget

    restating = Restating(**pipe.components, vocabulary=pipe.vocabulary)
    restating.set_progress_bar_config(disable=True)
    settings = dict(temperature=1.0, guidance_scale=1.0, num_candidates=3, output_type="latent")
    rewritten = restating(PROMPTS, rewrite_prompts=True, generator=seeded(2), **settings)
    assert restating.asked == PROMPTS
    assert rewritten.drawn_prompts == [Restating.restatement, PROMPTS[1]]
    plain = pipe([rewritten.drawn_prompts[0], PROMPTS[1]], generator=seeded(2), **settings)
    assert torch.equal(rewritten.images, plain.images) and plain.drawn_prompts == [rewritten.drawn_prompts[0], PROMPTS[1]]
    # The tiny LM's 64 positions less the longest accepted prompt (44 ids) and <|rewrite|>: the same for every prompt.
    assert rewrite_budget(pipe.vocabulary, 64) == 19
    # The random LM restates nothing within that budget, so each prompt is kept as it is.
    assert pipe.rewrite_prompts(PROMPTS) == PROMPTS


def test_rewriting_is_a_saved_default_and_needs_a_vocabulary_that_has_it(pipe, tmp_path, monkeypatch):
    import dataclasses

    save_unified_lm(pipe.lm, pipe.text_tokenizer, pipe.vocabulary, tmp_path / "lm")
    pipe.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    UniTokPipeline.from_parts(tmp_path / "lm", tmp_path / "image_tokenizer",
                              default_rewrite_prompts=True).save_pretrained(tmp_path / "rewriting")
    loaded = UniTokPipeline.from_pretrained(tmp_path / "rewriting")
    assert loaded.sampling_settings().rewrite_prompts and not loaded.sampling_settings(rewrite_prompts=False).rewrite_prompts
    assert not pipe.sampling_settings().rewrite_prompts
    with pytest.raises(UserError, match="True or False"):
        pipe.sampling_settings(rewrite_prompts="yes")

    older = dataclasses.replace(pipe.vocabulary, special_names=("boi", "eoi", "uncond"))
    monkeypatch.setattr(pipe, "vocabulary", older)
    with pytest.raises(UserError, match="cannot rewrite prompts"):
        pipe(PROMPTS[0], rewrite_prompts=True)
    with pytest.raises(UserError, match="cannot rewrite prompts"):
        pipe.rewrite_prompts(PROMPTS[0])


def test_rewrite_prompts_tells_a_finished_rewrite_from_one_cut_at_the_limit(pipe):
    import copy

    from generation.sampler import generate_rewrites

    text_ids = [pipe.encode_prompt(p) for p in PROMPTS]
    lm = copy.deepcopy(pipe.lm)
    lm.lm_head.bias = torch.nn.Parameter(torch.zeros(lm.lm_head.out_features))
    with torch.no_grad():
        lm.lm_head.bias[pipe.vocabulary.eos_id] = 1e4  # EOS first: finished, empty
    finished = generate_rewrites(lm, pipe.vocabulary, text_ids, max_new_tokens=5)
    assert [(r.ids, r.finished) for r in finished] == [([], True), ([], True)]
    with torch.no_grad():
        lm.lm_head.bias[pipe.vocabulary.eos_id] = -1e4  # never EOS: cut at the limit
    assert [r.finished for r in generate_rewrites(lm, pipe.vocabulary, text_ids, max_new_tokens=5)] == [False, False]


def test_a_rewrite_too_unsure_to_draw_still_reports_the_lms_words(pipe):
    trusted = pipe.rewrites(PROMPTS, min_confidence=0.0)
    refused = pipe.rewrites(PROMPTS, min_confidence=1.01)  # nothing is that sure
    assert [r.text for r in refused] == PROMPTS and not any(r.accepted for r in refused)
    assert [r.restatement for r in refused] == [r.restatement for r in trusted]
    assert all(r.text == r.restatement for r in trusted if r.accepted)


class StopAfter:
    """A step hook that raises ``Interrupted`` on its ``calls``-th call, counting its calls."""

    def __init__(self, calls: int) -> None:
        self.calls, self.asked = calls, 0

    def __call__(self) -> None:
        self.asked += 1
        if self.asked >= self.calls:
            raise Interrupted("enough")


@pytest.mark.parametrize("task", ["draw", "caption"])
def test_work_under_a_step_hook_calls_it_every_step_and_ends_where_it_raises(pipe, task):
    run = {"draw": lambda: pipe(PROMPTS, generator=seeded(2)),
           "caption": lambda: pipe.caption([Image.new("RGB", (16, 16), "red")], max_new_tokens=12)}[task]
    never = StopAfter(calls=10**9)
    with step_hook(never):
        finished = run()
    assert never.asked >= 12  # called once per decoding step
    fifth = StopAfter(calls=5)
    with step_hook(fifth), pytest.raises(Interrupted):
        run()
    assert fifth.asked == 5
    again = run()  # outside the block nothing stops it, and the interrupted call left no trace
    if task == "draw":
        assert [np.asarray(a).tolist() for a in again.images] == [np.asarray(b).tolist() for b in finished.images]
    else:
        assert again == finished


def test_captions_run_between_the_steps_of_a_drawing_change_neither():
    """What the server does to serve captions beside drawings (``unitok.api.model_worker``)."""
    pipe = tiny_pipeline(initializer_range=0.3)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.new("RGB", (16, 16), color) for color in ("red", "blue", "white")]
    alone_drawing = pipe(PROMPTS, generator=seeded(2)).images
    alone_captions = pipe.caption(images, max_new_tokens=10)
    nested_captions = []

    def caption_between_steps() -> None:
        with step_hook(lambda: None):  # as the server does: the nested work has its own hook
            nested_captions.append(pipe.caption(images, max_new_tokens=10))

    with step_hook(caption_between_steps):
        nested_drawing = pipe(PROMPTS, generator=seeded(2)).images
    assert len(nested_captions) >= 16 and all(c == alone_captions for c in nested_captions)
    assert [np.asarray(a).tolist() for a in nested_drawing] == [np.asarray(b).tolist() for b in alone_drawing]
