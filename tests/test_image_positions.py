"""Grid-cell embeddings of image codes (``unitok.lm.image_positions``): slots, decoding, saving.

Tiny random LMs with a random table: the table must change the logits, every decoding path must
give the logits of one plain forward pass over the whole sequence, and every way of saving and
loading an LM must keep the table out of the plain transformers checkpoint yet bring it back.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_llama, tiny_qwen
from transformers import AutoModelForCausalLM

from generation.decoder import CachedDecoder
from generation.llama_decoder import LlamaDecoder
from generation.rerank import prompt_log_likelihood
from generation.sampler import generate_captions, stack_prompts
from unitok.errors import UserError
from unitok.lm.image_positions import (
    ATTRIBUTE,
    IMAGE_POSITIONS_FILE,
    NO_SLOT,
    attach_image_positions,
    detached_image_positions,
    image_position_table,
    image_slots,
    lm_forward,
    next_image_slots,
)
from unitok.lm.model import load_unified_lm, save_unified_lm
from unitok.lm.sequences import (
    captioning_example,
    captioning_prompt,
    collate,
    text_to_image_example,
    text_to_image_prompt,
    unconditional_prompt,
)
from unitok.lm.text_tokenizer import encode_text, train_bpe_tokenizer

GRID, CODEBOOK = (2, 3), 20
CAPTIONS = ["a small red circle at the top", "a large blue square at the bottom left on a gray background"] * 10


@pytest.fixture(scope="module")
def text_tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=280)


@pytest.fixture(scope="module")
def llama(text_tokenizer):
    model, vocab = tiny_llama(text_tokenizer, CODEBOOK, GRID, max_positions=64)
    torch.nn.init.normal_(attach_image_positions(model, vocab).weight, std=1.0)  # loud enough to matter
    return model, vocab


@pytest.fixture(scope="module")
def qwen(llama):
    _, vocab = llama
    model = tiny_qwen(vocab, max_positions=64)
    torch.nn.init.normal_(attach_image_positions(model, vocab).weight, std=1.0)
    return model, vocab


def _codes(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (n, *GRID), generator=torch.Generator().manual_seed(seed))


def test_slots_count_the_cell_each_input_predicts(llama):
    _, vocab = llama
    cells = vocab.tokens_per_image
    t2i = text_to_image_example([5, 6, 7], _codes(0)[0], vocab).input_ids
    cap = captioning_example(_codes(1)[0], [8, 9], vocab).input_ids
    batch = collate([text_to_image_example([5, 6, 7], _codes(0)[0], vocab),
                     captioning_example(_codes(1)[0], [8, 9], vocab)], vocab)["input_ids"]
    slots = image_slots(batch, vocab)
    boi = t2i.index(vocab.boi_id)
    # <boi> predicts cell 0, code k predicts cell k + 1, the last code predicts <eoi>; nothing else has a slot.
    assert slots[0, boi : boi + cells + 1].tolist() == list(range(cells + 1))
    assert (slots[0, :boi] == NO_SLOT).all() and (slots[0, boi + cells + 1 :] == NO_SLOT).all()
    boi = cap.index(vocab.boi_id)
    assert slots[1, boi : boi + cells + 1].tolist() == list(range(cells + 1))
    assert (slots[1, boi + cells + 1 :] == NO_SLOT).all()  # <eoi>, the caption, <eos>, padding
    # Left padding shifts nothing but the padding; a sequence with no image has no slots.
    left = text_to_image_prompt([[5, 6, 7], [5]], vocab).input_ids
    assert image_slots(left, vocab)[:, -1].tolist() == [0, 0]
    assert (image_slots(torch.tensor([[5, 6, vocab.image_offset]]), vocab) == NO_SLOT).all()


def test_stepwise_slots_follow_the_whole_sequence(llama):
    _, vocab = llama
    for example in (text_to_image_example([5, 6], _codes(2)[0], vocab), captioning_example(_codes(3)[0], [8], vocab)):
        ids = torch.tensor([example.input_ids])
        whole = image_slots(ids, vocab)[0]
        slot = whole[:1]
        for t in range(1, ids.shape[1]):
            slot = next_image_slots(slot, ids[:, t], vocab)
            assert int(slot) == int(whole[t]), t


def test_the_table_changes_the_logits_from_boi_on(llama):
    model, vocab = llama
    ids = torch.tensor([text_to_image_example([5, 6], _codes(4)[0], vocab).input_ids])
    with torch.inference_mode():
        with_table = lm_forward(model, vocab, ids).logits
        with detached_image_positions(model):
            assert lm_forward(model, vocab, ids).logits.shape == with_table.shape  # no table: plain ids
            plain = model(input_ids=ids).logits
    assert image_position_table(model) is not None  # put back after the block
    boi = ids[0].tolist().index(vocab.boi_id)
    torch.testing.assert_close(with_table[:, :boi], plain[:, :boi])
    assert not torch.allclose(with_table[:, boi:], plain[:, boi:], atol=1e-3)


@pytest.mark.parametrize("decoder", [LlamaDecoder, CachedDecoder])
def test_decoders_give_the_logits_of_one_whole_forward_pass(llama, qwen, decoder, text_tokenizer):
    model, vocab = llama if decoder is LlamaDecoder else qwen
    texts = [encode_text(text_tokenizer, c) for c in CAPTIONS[:2]]
    prompt = stack_prompts(text_to_image_prompt(texts, vocab), unconditional_prompt(2, vocab), pad_id=vocab.pad_id)
    fed = torch.randint(vocab.image_offset, vocab.size, (vocab.tokens_per_image, 4),
                        generator=torch.Generator().manual_seed(0))
    fed[-1] = vocab.eoi_id  # then past the image: no slot any more
    run = decoder(model, vocab, prompt, range(vocab.size), vocab.tokens_per_image + 1)
    with torch.inference_mode():
        logits = [run.prefill()] + [run.step(fed[t]) for t in range(fed.shape[0])]
        for row in range(4):
            real = prompt.attention_mask[row].bool()
            alone = torch.cat([prompt.input_ids[row][real], fed[:, row]]).unsqueeze(0)
            whole = lm_forward(model, vocab, alone).logits[0, -len(logits):]
            torch.testing.assert_close(torch.stack([step[row] for step in logits]), whole, atol=1e-5, rtol=1e-5)


def test_captioning_and_reranking_see_the_table(llama):
    model, vocab = llama
    codes = _codes(5)
    captions = generate_captions(model, vocab, codes, max_new_tokens=4)
    prompt = captioning_prompt(codes, vocab)
    with torch.inference_mode():
        first = lm_forward(model, vocab, prompt.input_ids, attention_mask=prompt.attention_mask,
                           position_ids=prompt.position_ids).logits[:, -1, : vocab.text_size].argmax(-1)
    assert [c[0] if c else vocab.eos_id for c in captions] == first.tolist()
    text = [[5, 6, 7], [8]]
    example = collate([captioning_example(codes[i], text[i], vocab) for i in range(2)], vocab)
    with torch.inference_mode():
        logits = lm_forward(model, vocab, example["input_ids"], attention_mask=example["attention_mask"]).logits
    log_probs = logits[:, :-1].log_softmax(-1).gather(-1, example["labels"][:, 1:].clamp(min=0).unsqueeze(-1))[..., 0]
    expected = (log_probs * (example["labels"][:, 1:] >= 0)).sum(-1)
    torch.testing.assert_close(prompt_log_likelihood(model, vocab, codes, text), expected, atol=1e-4, rtol=1e-4)


def test_save_keeps_the_checkpoint_plain_and_load_brings_the_table_back(llama, text_tokenizer, tmp_path):
    model, vocab = llama
    save_unified_lm(model, text_tokenizer, vocab, tmp_path / "lm")
    assert image_position_table(model) is not None  # saving does not take it off the live model
    assert not any(ATTRIBUTE in key for key in load_file(str(tmp_path / "lm" / "model.safetensors")))
    assert (tmp_path / "lm" / IMAGE_POSITIONS_FILE).is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")  # a plain transformers folder
    assert image_position_table(plain) is None
    loaded, _, _ = load_unified_lm(tmp_path / "lm")
    ids = torch.tensor([text_to_image_example([5], _codes(6)[0], vocab).input_ids])
    with torch.inference_mode():
        torch.testing.assert_close(lm_forward(loaded, vocab, ids).logits, lm_forward(model, vocab, ids).logits)

    save_file({"weight": torch.zeros(3, 32)}, str(tmp_path / "lm" / IMAGE_POSITIONS_FILE))
    with pytest.raises(UserError, match="does not fit"):
        load_unified_lm(tmp_path / "lm")
