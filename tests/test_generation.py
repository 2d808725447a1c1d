"""The sampler: batched classifier-free guidance, per-row seeds, restricted sampling, captioning.

Models are tiny and random, built on the spot (``tiny_models``): a Llama through ``build_scratch_lm``
(the fast ``LlamaDecoder`` path) and a Qwen2 over the same vocabulary (the generic transformers
path). Random weights are enough: every property tested here is about the sampler, not about
what the model learned.
"""

import pytest
import torch
from tiny_models import tiny_llama, tiny_qwen

from generation import llama_decoder
from generation.decoder import CachedDecoder
from generation.llama_decoder import LlamaDecoder
from generation.sampler import generate_captions, sample_image_codes, stack_prompts
from generation.token_choice import SamplingOptions, choose_tokens, guide, uniform_streams
from unitok.lm.sequences import text_to_image_prompt, unconditional_prompt
from unitok.lm.text_tokenizer import encode_text, train_bpe_tokenizer

GRID, CODEBOOK = (3, 4), 40
CAPTIONS = ["a small red circle at the top", "two blue squares on a white background",
            "a large green triangle at the bottom left and a purple plus at the center"] * 10


@pytest.fixture(scope="module")
def text_tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=290)


@pytest.fixture(scope="module")
def llama(text_tokenizer):
    return tiny_llama(text_tokenizer, CODEBOOK, GRID, max_positions=96, tie_embeddings=False)


@pytest.fixture(scope="module")
def qwen(llama):
    _, vocab = llama
    return tiny_qwen(vocab, max_positions=96), vocab


@pytest.fixture(params=["llama", "qwen"])
def lm(request, llama, qwen):
    """Both decoding paths: the fast Llama one and the generic transformers one."""
    model, vocab = llama if request.param == "llama" else qwen
    assert llama_decoder.supports(model) == (request.param == "llama")
    return model, vocab


@pytest.fixture(scope="module")
def prompts(text_tokenizer):
    texts = ["a red circle", "two blue squares at the top right on a gray background", "a plus"]
    return [encode_text(text_tokenizer, t) for t in texts]


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_guidance_scale_one_equals_unguided_sampling(lm, prompts):
    model, vocab = lm
    guided = sample_image_codes(model, vocab, prompts, guidance_scale=1.0, generator=seeded(1, 2, 3))
    unguided = sample_image_codes(model, vocab, prompts, guidance_scale=None, generator=seeded(1, 2, 3))
    assert torch.equal(guided, unguided)
    # ...while a real scale changes the images, so the unconditional rows are really used.
    strong = sample_image_codes(model, vocab, prompts, guidance_scale=5.0, generator=seeded(1, 2, 3))
    assert not torch.equal(strong, unguided)


def test_batched_prompts_equal_one_by_one_for_the_same_seeds(lm, prompts):
    model, vocab = lm
    options = SamplingOptions(temperature=1.0, top_k=20)
    batched = sample_image_codes(model, vocab, prompts, num_images_per_prompt=2, guidance_scale=3.0,
                                 options=options, generator=seeded(*range(6)))
    one_by_one = torch.cat([
        sample_image_codes(model, vocab, [prompts[i]], guidance_scale=3.0, options=options,
                           generator=seeded(2 * i + k))
        for i in range(3) for k in range(2)
    ])
    assert torch.equal(batched, one_by_one)


def test_same_seed_same_codes_other_seed_other_codes(lm, prompts):
    model, vocab = lm
    first = sample_image_codes(model, vocab, prompts[:1], generator=torch.Generator().manual_seed(7))
    again = sample_image_codes(model, vocab, prompts[:1], generator=torch.Generator().manual_seed(7))
    other = sample_image_codes(model, vocab, prompts[:1], generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("options", [
    SamplingOptions(), SamplingOptions(temperature=0.0), SamplingOptions(temperature=2.0, top_k=3),
    SamplingOptions(top_p=0.5),
])
def test_codes_in_range_and_of_the_right_count_even_when_text_ids_dominate(llama, prompts, options):
    model, vocab = llama
    loud = _copy(model)
    with torch.no_grad():  # make every non-image id (text, <|eoi|>, <|boi|>) far likelier than any code
        loud.lm_head.weight[: vocab.image_offset] *= 50
    codes = sample_image_codes(loud, vocab, prompts, num_images_per_prompt=2, options=options,
                               generator=seeded(*range(6)))
    assert codes.shape == (6, *GRID)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < CODEBOOK


def test_fast_llama_path_gives_the_logits_of_transformers_with_and_without_padding(llama, prompts):
    model, vocab = llama
    prompt = stack_prompts(text_to_image_prompt(prompts, vocab), unconditional_prompt(3, vocab), pad_id=vocab.pad_id)
    every_id = range(vocab.size)
    fast, generic = LlamaDecoder(model, vocab, prompt, every_id, 8), CachedDecoder(model, vocab, prompt, every_id, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast.prefill(), generic.prefill(), atol=1e-5, rtol=1e-5)
        fed = torch.randint(vocab.image_offset, vocab.size, (5, 6), generator=torch.Generator().manual_seed(0))
        for t in range(5):
            last = fast.step(fed[t])
            torch.testing.assert_close(last, generic.step(fed[t]), atol=1e-5, rtol=1e-5)
        # The most padded row alone, unpadded, through the plain model: same logits.
        row = 3  # an unconditional row, padded to the longest caption
        real = prompt.attention_mask[row].bool()
        alone = torch.cat([prompt.input_ids[row][real], fed[:, row]]).unsqueeze(0)
        torch.testing.assert_close(last[row], model(alone).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_captions_are_text_stop_at_eos_and_respect_max_length(llama):
    model, vocab = llama
    codes = torch.randint(0, CODEBOOK, (3, *GRID), generator=torch.Generator().manual_seed(0))
    captions = generate_captions(model, vocab, codes, max_new_tokens=7)
    assert len(captions) == 3
    assert all(len(c) <= 7 and all(0 <= i < vocab.text_size and i != vocab.eos_id for i in c) for c in captions)

    chatty, quiet = _copy(model), _copy(model)
    favourite = vocab.eos_id + 5
    with torch.no_grad():
        chatty.lm_head.weight[favourite] *= 0
        chatty.lm_head.bias = torch.nn.Parameter(torch.zeros(vocab.size))
        chatty.lm_head.bias[favourite] = 1e4  # always the same text id: runs to max length
        quiet.lm_head.bias = torch.nn.Parameter(torch.zeros(vocab.size))
        quiet.lm_head.bias[vocab.eos_id] = 1e4  # EOS at once: empty captions
        quiet.lm_head.bias[vocab.image_offset:] = 2e4  # likelier still, but not text: never chosen
    assert generate_captions(chatty, vocab, codes, max_new_tokens=7) == [[favourite] * 7] * 3
    assert generate_captions(quiet, vocab, codes, max_new_tokens=7) == [[]] * 3


def test_batched_captions_equal_one_by_one(lm):
    model, vocab = lm
    codes = torch.randint(0, CODEBOOK, (4, *GRID), generator=torch.Generator().manual_seed(3))
    options = SamplingOptions(temperature=1.0)
    batched = generate_captions(model, vocab, codes, max_new_tokens=6, options=options, generator=seeded(*range(4)))
    alone = [generate_captions(model, vocab, codes[i:i + 1], max_new_tokens=6, options=options,
                               generator=seeded(i))[0] for i in range(4)]
    assert batched == alone


def test_prompt_longer_than_the_context_is_refused(llama):
    model, vocab = llama
    with pytest.raises(ValueError, match="context of 96"):
        sample_image_codes(model, vocab, [[5] * 90])


# -- token choice -------------------------------------------------------------------------------


def test_guidance_at_scale_one_is_exactly_the_conditional_logits():
    cond, uncond = torch.randn(4, 10), torch.randn(4, 10)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guide(cond, uncond, torch.tensor([3.0] * 4)), uncond + 3 * (cond - uncond))


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(50, 30)
    uniforms = torch.rand(50)
    greedy = logits.argmax(-1)
    assert torch.equal(choose_tokens(logits, uniforms, SamplingOptions(top_k=1)), greedy)
    assert torch.equal(choose_tokens(logits, uniforms, SamplingOptions(top_p=1e-6)), greedy)
    assert torch.equal(choose_tokens(logits, uniforms, SamplingOptions(temperature=0.0)), greedy)


def test_extreme_uniforms_never_pick_an_impossible_token():
    logits = torch.tensor([[-torch.inf, 0.0, -torch.inf, 1.0, -torch.inf]] * 3)
    uniforms = torch.tensor([0.0, 0.5, 1.0 - 1e-7])
    picks = choose_tokens(logits, uniforms, SamplingOptions())
    assert set(picks.tolist()) <= {1, 3}
    assert picks[0] == 1 and picks[2] == 3


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    uniforms = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    picks = choose_tokens(probs.log().expand(20000, 4), uniforms, SamplingOptions())
    freq = torch.bincount(picks, minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_one_generator_per_row_makes_rows_independent_of_the_batch():
    together = uniform_streams(seeded(5, 6, 7), 3, 8, "cpu")
    assert torch.equal(together[1], uniform_streams(seeded(6), 1, 8, "cpu")[0])
    with pytest.raises(ValueError, match="one per image"):
        uniform_streams(seeded(1, 2), 3, 8, "cpu")


def test_sampling_options_reject_bad_values():
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-2), dict(top_p=0.0),
                dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingOptions(**bad)


def _copy(model):
    clone = type(model)(model.config).eval()
    clone.load_state_dict(model.state_dict())
    return clone


@pytest.fixture(params=[False, True], ids=["bf16", "bf16-packed"])
def bf16_llama(request, llama, monkeypatch):
    """The tiny Llama in bf16, its products from packed weights or not (as on a CPU with or
    without bf16 units)."""
    from generation import packed_linear
    from unitok.precision import cpu_has_fast_bf16

    if request.param and (packed_linear._packing_ops() is None or not torch.backends.mkldnn.is_available()
                          or not cpu_has_fast_bf16()):
        pytest.skip("packed bf16 products run only on a CPU with bf16 units and a PyTorch with oneDNN's packing ops")
    monkeypatch.setattr(packed_linear, "cpu_has_fast_bf16", lambda: request.param)
    model, vocab = llama
    return _copy(model).to(torch.bfloat16), vocab


def test_fast_llama_path_in_bf16_follows_transformers_and_fp32(bf16_llama, llama, prompts):
    """In bf16 the fast path attends in fp32 on a CPU (``LlamaDecoder``): its logits stay as close
    to the fp32 model's as transformers' own bf16 forward is."""
    model, vocab = bf16_llama
    prompt = stack_prompts(text_to_image_prompt(prompts, vocab), unconditional_prompt(3, vocab), pad_id=vocab.pad_id)
    every_id = range(vocab.size)
    fast, generic = LlamaDecoder(model, vocab, prompt, every_id, 8), CachedDecoder(model, vocab, prompt, every_id, 8)
    exact = LlamaDecoder(llama[0], vocab, prompt, every_id, 8)
    with torch.inference_mode():
        pairs = [(fast.prefill(), generic.prefill(), exact.prefill())]
        fed = torch.randint(vocab.image_offset, vocab.size, (5, 6), generator=torch.Generator().manual_seed(0))
        pairs += [(fast.step(ids), generic.step(ids), exact.step(ids)) for ids in fed]
    for ours, theirs, fp32 in pairs:
        assert ours.dtype == torch.bfloat16
        ours_error, their_error = (ours.float() - fp32).abs().max(), (theirs.float() - fp32).abs().max()
        assert ours_error <= 1.5 * their_error + 1e-3, (ours_error, their_error)
        torch.testing.assert_close(ours.float(), theirs.float(), atol=0.1, rtol=0.05)


def test_bf16_sampling_is_seeded_and_batch_independent(bf16_llama, prompts):
    model, vocab = bf16_llama
    options = SamplingOptions(temperature=1.0)
    batched = sample_image_codes(model, vocab, prompts, guidance_scale=3.0, options=options, generator=seeded(4, 5, 6))
    again = sample_image_codes(model, vocab, prompts, guidance_scale=3.0, options=options, generator=seeded(4, 5, 6))
    alone = torch.cat([sample_image_codes(model, vocab, [p], guidance_scale=3.0, options=options, generator=seeded(s))
                       for p, s in zip(prompts, (4, 5, 6), strict=True)])
    assert torch.equal(batched, again) and torch.equal(batched, alone)
    assert int(batched.min()) >= 0 and int(batched.max()) < CODEBOOK
