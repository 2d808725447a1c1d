"""The unified LM: sequence formats, vocabulary extension of three HF families, training, export.

Everything is tiny and built on the spot: BPE tokenizers trained on a few Shapes captions, random
Llama/Qwen2/GPT-2 models saved as "hub" folders, code shards written with ShardWriter.
"""

import dataclasses
import json
import random
import subprocess
import sys
import textwrap
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from unitok.cli import main as unitok_main
from unitok.data import shapes, shapes_language
from unitok.data.shards import ShardWriter
from unitok.errors import UserError
from unitok.lm.data import CodeShardDataModule
from unitok.lm.image_positions import ATTRIBUTE, image_position_table, lm_forward
from unitok.lm.model import build_pretrained_lm, load_unified_lm, resize_embeddings, save_unified_lm
from unitok.lm.module import UnifiedLMModule, check_context_holds_an_image, task_weight_table
from unitok.lm.packing import packing_is_exact
from unitok.lm.sequences import (
    IGNORE,
    TASKS,
    PromptIds,
    SampleTexts,
    TaskMix,
    captioning_example,
    captioning_prompt,
    collate,
    editing_example,
    next_token_losses,
    rewriting_example,
    rewriting_prompt,
    sample_example,
    text_to_image_example,
    text_to_image_prompt,
    unconditional_prompt,
)
from unitok.lm.text_tokenizer import (
    decode_text,
    encode_text,
    extend_tokenizer,
    train_bpe_tokenizer,
    vocabulary_for,
)
from unitok.lm.training import run_lm_cli
from unitok.vocabulary import SPECIALS, VOCABULARY_FILE, UnifiedVocabulary

GRID, CODEBOOK = (2, 3), 24


def scenes(num: int, seed: int = 0) -> list[shapes.Scene]:
    rng = np.random.default_rng(seed)
    return [shapes.random_scene(rng) for _ in range(num)]


def write_code_shards(out_dir, num: int, grid=GRID, codebook=CODEBOOK, seed=0, meta_extra=None) -> list[tuple[str, np.ndarray]]:
    """Code shards as `unitok tokenize` writes them: codes.npy, txt (reference caption), json meta."""
    rng = np.random.default_rng(seed)
    pairs = []
    with ShardWriter(out_dir, prefix="codes", max_count=max(1, num // 2)) as writer:
        for index, scene in enumerate(scenes(num, seed)):
            codes = rng.integers(0, codebook, grid).astype(np.int16)
            caption = shapes.canonical_caption(scene)
            meta = {"scene": scene.to_dict(), "paraphrases": [shapes_language.describe(scene, rng, detail="full", noise=False).text for _ in range(2)],
                    **(meta_extra or {})}
            writer.write({"__key__": f"{index:06d}", "codes.npy": codes, "txt": caption, "json": meta})
            pairs.append((caption, codes))
    return pairs


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A BPE trained on captions, with the special-token conventions of each family."""
    base = train_bpe_tokenizer((shapes.canonical_caption(s) for s in scenes(40)), vocab_size=300)
    if family == "llama":  # BOS distinct from EOS
        base.add_special_tokens({"bos_token": "<s>"})
    if family == "gpt2":  # BOS is EOS
        base.bos_token = base.eos_token
    return base


def save_tiny_hub_model(family: str, path) -> None:
    """A random model + tokenizer folder, standing in for a hub checkpoint."""
    tokenizer = tiny_tokenizer(family)
    size = len(tokenizer)
    if family == "llama":  # untied output head
        model = LlamaForCausalLM(LlamaConfig(vocab_size=size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    elif family == "qwen2":  # padded embedding rows beyond the tokenizer, tied
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=size + 20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=size, n_embd=32, n_layer=2, n_head=4, n_positions=256))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture
def vocab() -> UnifiedVocabulary:
    return UnifiedVocabulary(text_size=50, codebook_size=CODEBOOK, grid=GRID, eos_id=0, pad_id=1, bos_id=2)


# -- sequence formats --------------------------------------------------------------------------


def test_training_sequences_put_the_loss_on_the_generated_part(vocab):
    codes = torch.arange(6).view(GRID)
    code_ids = (torch.arange(6) + vocab.image_offset).tolist()
    t2i = text_to_image_example([10, 11, 12], codes, vocab)
    assert t2i.input_ids == [2, 10, 11, 12, vocab.boi_id, *code_ids, vocab.eoi_id]
    assert t2i.labels == [IGNORE] * 5 + code_ids + [vocab.eoi_id]
    assert TASKS[t2i.task] == "text_to_image"

    uncond = text_to_image_example(None, codes, vocab)
    assert uncond.input_ids[:3] == [2, vocab.uncond_id, vocab.boi_id]

    cap = captioning_example(codes, [10, 11], vocab)
    assert cap.input_ids == [2, vocab.boi_id, *code_ids, vocab.eoi_id, 10, 11, vocab.eos_id]
    assert cap.labels == [IGNORE] * 9 + [10, 11, vocab.eos_id]
    assert TASKS[cap.task] == "captioning"

    rewrite = rewriting_example([20, 21, 22], [10, 11], vocab)
    assert rewrite.input_ids == [2, 20, 21, 22, vocab.rewrite_id, 10, 11, vocab.eos_id]
    assert rewrite.labels == [IGNORE] * 5 + [10, 11, vocab.eos_id]
    assert TASKS[rewrite.task] == "rewriting"


def test_no_bos_when_the_vocabulary_has_none():
    vocab = UnifiedVocabulary(text_size=50, codebook_size=CODEBOOK, grid=GRID, eos_id=0, pad_id=0)
    assert text_to_image_example([10], torch.zeros(GRID, dtype=torch.long), vocab).input_ids[:2] == [10, vocab.boi_id]
    assert unconditional_prompt(1, vocab).input_ids.tolist() == [[vocab.uncond_id, vocab.boi_id]]


def test_generation_prompts_are_prefixes_of_training_sequences(vocab):
    codes = torch.randint(0, CODEBOOK, (2, *GRID))
    captions = [[10, 11, 12], [13]]
    prompt = text_to_image_prompt(captions, vocab)
    for row, caption in enumerate(captions):
        real = prompt.input_ids[row][prompt.attention_mask[row].bool()].tolist()
        assert real == text_to_image_example(caption, codes[row], vocab).input_ids[: len(real)]
        assert real[-1] == vocab.boi_id
    # Left padding: rows end together; positions start at 0 on each row's first real id.
    assert prompt.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert prompt.input_ids[1, :2].tolist() == [vocab.pad_id] * 2
    assert prompt.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]

    prompt = captioning_prompt(codes, vocab)
    for row in range(2):
        full = captioning_example(codes[row], [10], vocab).input_ids
        assert prompt.input_ids[row].tolist() == full[: prompt.input_ids.shape[1]]
        assert prompt.input_ids[row, -1] == vocab.eoi_id

    uncond = unconditional_prompt(3, vocab)
    assert uncond.input_ids.tolist() == [[2, vocab.uncond_id, vocab.boi_id]] * 3

    prompt = rewriting_prompt(captions, vocab)
    for row, caption in enumerate(captions):
        real = prompt.input_ids[row][prompt.attention_mask[row].bool()].tolist()
        assert real == rewriting_example(caption, [10], vocab).input_ids[: len(real)]
        assert real[-1] == vocab.rewrite_id


def test_task_mix_draws_tasks_caption_dropout_and_paraphrases(vocab):
    codes = torch.zeros(GRID, dtype=torch.long)
    texts = SampleTexts([10], [PromptIds([20]), PromptIds([21])])
    rng = random.Random(0)
    mix = TaskMix(text_to_image=0.7, caption_dropout=0.2, paraphrase=0.5)
    drawn = [sample_example(codes, texts, vocab, mix, rng) for _ in range(4000)]
    t2i = [e for e in drawn if TASKS[e.task] == "text_to_image"]
    assert 0.66 < len(t2i) / len(drawn) < 0.74
    firsts = [e.input_ids[1] for e in t2i]  # after BOS: the caption's first id or <|uncond|>
    assert 0.17 < firsts.count(vocab.uncond_id) / len(t2i) < 0.23
    assert 0.36 < (firsts.count(20) + firsts.count(21)) / len(t2i) < 0.44  # 0.8 * 0.5 = 0.4
    captioning = [e for e in drawn if TASKS[e.task] == "captioning"]
    assert all(e.labels[-2] == 10 for e in captioning)  # captioning always targets the reference
    with pytest.raises(ValueError, match="probability"):
        TaskMix(caption_dropout=1.5)


def test_task_mix_draws_rewriting_from_paraphrases_and_the_reference(vocab):
    codes = torch.zeros(GRID, dtype=torch.long)
    texts = SampleTexts([10], [PromptIds([20]), PromptIds([21])])
    rng = random.Random(0)
    mix = TaskMix(text_to_image=0.6, rewriting=0.1)
    drawn = [sample_example(codes, texts, vocab, mix, rng) for _ in range(6000)]
    tasks = [TASKS[e.task] for e in drawn]
    assert 0.08 < tasks.count("rewriting") / len(drawn) < 0.12
    assert 0.27 < tasks.count("captioning") / len(drawn) < 0.33
    rewrites = [e for e in drawn if TASKS[e.task] == "rewriting"]
    assert all(e.labels[-2:] == [10, vocab.eos_id] for e in rewrites)  # no normal forms: restates as the reference
    sources = [e.input_ids[1] for e in rewrites]
    assert {20, 21, 10} == set(sources) and 0.25 < sources.count(10) / len(sources) < 0.42  # 1 in 3
    # Samples without paraphrases have nothing to rewrite: those draws caption instead.
    alone = [TASKS[sample_example(codes, SampleTexts([10]), vocab, mix, rng).task] for _ in range(500)]
    assert "rewriting" not in alone
    with pytest.raises(ValueError, match="at most 1"):
        TaskMix(text_to_image=0.8, rewriting=0.3)


def test_every_task_has_its_sequence_and_draws_its_share(vocab):
    codes, clean, edited = (torch.full(GRID, k, dtype=torch.long) for k in (1, 2, 3))
    texts = SampleTexts(
        [10], [PromptIds([20], normal=[30]), PromptIds([21], normal=[31], unknown=[40])],
        questions=[([50], [51])], verdicts=[([60], True), ([61], False)], edit=([70], edited), target_codes=clean)
    mix = TaskMix(text_to_image=0.3, paraphrase=0.0, normal_form=1.0, rewriting=0.1, answering=0.2, verifying=0.1,
                  editing=0.2)
    drawn = [sample_example(codes, texts, vocab, mix, random.Random(i)) for i in range(3000)]
    shares = {task: sum(TASKS[e.task] == task for e in drawn) / len(drawn) for task in TASKS}
    for task, share in (("text_to_image", 0.3), ("rewriting", 0.1), ("answering", 0.2), ("verifying", 0.1),
                        ("editing", 0.2), ("captioning", 0.1)):
        assert abs(shares[task] - share) < 0.03, (task, shares)
    image = [vocab.boi_id, *vocab.to_lm_ids(codes).tolist(), vocab.eoi_id]
    bos = [] if vocab.bos_id is None else [vocab.bos_id]
    by_task = {TASKS[e.task]: e for e in drawn if not (TASKS[e.task] == "text_to_image" and e.input_ids[1] == vocab.uncond_id)}
    t2i = by_task["text_to_image"]  # drawn from a normal form (the unknown prompt's is never drawn as written)
    assert t2i.input_ids[len(bos)] in (30, 31) and t2i.labels[-2] == vocab.to_lm_ids(clean).tolist()[-1]
    answer = by_task["answering"]
    assert answer.input_ids == bos + image + [50, vocab.special_id("answer"), 51, vocab.eos_id]
    assert [t for t in answer.labels if t != -100] == [51, vocab.eos_id]
    verdicts = {e.input_ids[-2]: e.labels[-1] for e in drawn if TASKS[e.task] == "verifying"}
    assert verdicts == {vocab.special_id("verify"): vocab.special_id("yes")} or set(verdicts.values()) <= {
        vocab.special_id("yes"), vocab.special_id("no")}
    edit = by_task["editing"]
    assert edit.input_ids == bos + image + [70, vocab.special_id("edit"), vocab.boi_id,
                                             *vocab.to_lm_ids(edited).tolist(), vocab.eoi_id]
    rewrites = {tuple(e.input_ids) for e in drawn if TASKS[e.task] == "rewriting"}
    assert tuple(bos + [21, vocab.rewrite_id, 31, vocab.special_id("unknown"), 40, vocab.eos_id]) in rewrites


def test_validation_measures_a_matching_and_a_mismatching_verdict():
    from unitok.lm.data import ExampleMaker

    tokenizer = tiny_tokenizer("qwen2")
    vocab = UnifiedVocabulary(text_size=len(tokenizer), codebook_size=CODEBOOK, grid=GRID, eos_id=tokenizer.eos_token_id,
                              pad_id=tokenizer.eos_token_id, bos_id=None)
    sample = {"codes": np.zeros(GRID, np.int16), "caption": "a small red circle at the top on a white background",
              "meta": {"verify": [{"text": "a red circle", "match": True}, {"text": "a blue square", "match": False},
                                  {"text": "a red star", "match": False}]}}
    examples = ExampleMaker(tokenizer, vocab, TaskMix(verifying=0.1), training=False)(sample)
    verdicts = [e.labels[-1] for e in examples if TASKS[e.task] == "verifying"]
    assert verdicts == [vocab.special_id("yes"), vocab.special_id("no")]


def test_collate_right_pads_with_no_loss_on_padding(vocab):
    codes = torch.zeros(GRID, dtype=torch.long)
    batch = collate([text_to_image_example([10, 11], codes, vocab), captioning_example(codes, [10], vocab)], vocab)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 11)
    assert batch["attention_mask"].sum(1).tolist() == [11, 11]
    batch = collate([text_to_image_example([10], codes, vocab), captioning_example(codes, [10, 11, 12], vocab)], vocab)
    assert batch["attention_mask"][0].tolist() == [1] * 10 + [0] * 3
    assert batch["input_ids"][0, -3:].tolist() == [vocab.pad_id] * 3
    assert batch["labels"][0, -3:].tolist() == [IGNORE] * 3
    assert batch["task"][:, 0].tolist() == [TASKS.index("text_to_image"), TASKS.index("captioning")]
    assert batch["task"][0, -3:].tolist() == batch["sequence"][0, -3:].tolist() == [-1] * 3


# -- text tokenizer ----------------------------------------------------------------------------


def test_bpe_tokenizer_names_every_id_of_the_layout():
    tokenizer = tiny_tokenizer("qwen2")
    vocab = vocabulary_for(tokenizer, CODEBOOK, GRID)
    assert vocab.text_size == len(tokenizer) == 300 and vocab.bos_id is None
    extend_tokenizer(tokenizer, vocab)
    assert len(tokenizer) == vocab.size
    assert tokenizer.convert_tokens_to_ids("<|boi|>") == vocab.boi_id
    assert tokenizer.convert_ids_to_tokens(vocab.image_offset + 5) == "<|img_5|>"
    caption = "a small red circle at the top left on a white background"
    ids = encode_text(tokenizer, caption)
    assert max(ids) < vocab.text_size and len(ids) < len(caption) // 2  # merges learned
    assert decode_text(tokenizer, ids + [vocab.eoi_id, vocab.image_offset]) == caption
    with pytest.raises(UserError, match="extended already"):
        extend_tokenizer(tokenizer, vocab)


def test_loss_is_one_token_mean_per_sequence(tmp_path):
    save_tiny_hub_model("llama", tmp_path / "hub")
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID, warmup_steps=1)
    vocab, codes = module.vocabulary, torch.arange(6).view(GRID)
    examples = [text_to_image_example([10, 11], codes, vocab), captioning_example(codes, [12, 13, 14], vocab),
                rewriting_example([15, 16], [12, 13, 14, 17, 18], vocab)]
    batch = collate(examples, vocab)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns and logs nothing
        loss = module._step(batch, "val")
        logits = lm_forward(module.model, vocab, batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_loss, targets = next_token_losses(logits, batch["labels"])
    counted = targets != IGNORE
    per_sequence = [token_loss[row][counted[row]].mean() for row in range(3)]  # 7, 4 and 6 targets
    torch.testing.assert_close(loss, torch.stack(per_sequence).mean())

    module.task_weight_table = task_weight_table({"text_to_image": 3, "rewriting": 0})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weighted = module._step(batch, "val")
    torch.testing.assert_close(weighted, (3 * per_sequence[0] + per_sequence[1]) / 4)


@pytest.mark.parametrize(("weights", "message"), [
    ({"drawing": 2}, r"no such task \['drawing'\]: the tasks are text_to_image, captioning"),
    ({"editing": -1}, "finite numbers >= 0"),
    ({"editing": float("nan")}, "finite numbers >= 0"),
    ({"editing": "lots"}, "finite numbers >= 0"),
])
def test_task_weights_name_known_tasks_and_finite_non_negative_weights(weights, message):
    with pytest.raises(UserError, match=message):
        task_weight_table(weights)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_packed_batches_give_the_losses_and_gradients_of_one_sequence_per_row(family, tmp_path):
    save_tiny_hub_model(family, tmp_path / "hub")
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID, warmup_steps=1,
                             image_positions=True)
    module.eval()  # GPT-2's dropout would make the two passes differ
    vocab, codes = module.vocabulary, torch.arange(6).view(GRID)
    assert packing_is_exact(module.model, vocab) and not module.training  # the probe leaves the mode as it was
    examples = [editing_example(codes, [10, 11, 12], codes.flip(0), vocab),  # the longest: a row of its own
                text_to_image_example([10, 11], codes, vocab), captioning_example(codes.flip(1), [12, 13], vocab),
                rewriting_example([15], [12, 13], vocab), rewriting_example([16, 17], [12], vocab)]
    packed, unpacked = collate(examples, vocab, pack_length=1), collate(examples, vocab)
    assert packed["input_ids"].shape[0] == 3 and unpacked["input_ids"].shape[0] == 5
    assert sorted(packed["sequence"].unique().tolist()) == [-1, 0, 1, 2, 3, 4]
    results = []
    for batch in (packed, unpacked):
        module.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside a Trainer warns and logs nothing
            loss = module._step(batch, "train")
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for packed_grad, unpacked_grad in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(packed_grad, unpacked_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("exact", [True, False])
def test_training_packs_sequences_only_for_a_model_that_keeps_them_apart(exact, tmp_path, monkeypatch):
    save_tiny_hub_model("llama", tmp_path / "hub")
    write_code_shards(tmp_path / "train", 8)
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID, warmup_steps=1)
    if not exact:  # a model whose attention mask ignores position_ids (none of the three families here)
        monkeypatch.setattr("unitok.lm.data.packing_is_exact", lambda model, vocab: False)
    data = CodeShardDataModule(train_shards=str(tmp_path / "train"), batch_size=8, samples_per_epoch=8,
                               num_workers=0, shuffle_buffer=1, rewriting=0.5)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=data)
    assert any("every sequence gets a row of its own" in str(w.message) for w in caught) != exact
    batch = next(iter(data.train_dataloader()))
    assert ("position_ids" in batch) == exact and ("attention_mask" in batch) != exact
    assert batch["input_ids"].shape[0] < 8 if exact else batch["input_ids"].shape[0] == 8
    with pytest.raises(UserError, match="data.pack_length must be a positive number of ids"):
        CodeShardDataModule(train_shards=str(tmp_path / "train"), pack_length=0)


# -- three HF families: extend and train -----------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_hf_family_extends_its_vocabulary_and_trains(family, tmp_path):
    save_tiny_hub_model(family, tmp_path / "hub")
    write_code_shards(tmp_path / "train", 8)
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID, warmup_steps=1)
    model, tokenizer, vocab = module.model, module.text_tokenizer, module.vocabulary

    assert vocab.bos_id == (tokenizer.convert_tokens_to_ids("<s>") if family == "llama" else None)
    assert model.config.vocab_size == vocab.size == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == vocab.size
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (family != "llama")
    for embedding in {model.get_input_embeddings(), model.get_output_embeddings()}:
        new_rows = embedding.weight[vocab.text_size:].detach()
        assert new_rows.std(0).mean() > 0.1 * embedding.weight[: vocab.text_size].detach().std(0).mean()

    before = model.get_input_embeddings().weight[vocab.image_offset:].detach().clone()
    data = CodeShardDataModule(train_shards=str(tmp_path / "train"), batch_size=4, samples_per_epoch=8,
                               num_workers=0, shuffle_buffer=1)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, model.get_input_embeddings().weight[vocab.image_offset:].detach())


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied output heads
def test_an_export_saved_before_rewrite_gains_its_row_and_keeps_what_it_learned(family, tmp_path):
    save_tiny_hub_model(family, tmp_path / "hub")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hub")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hub")
    old_vocab = dataclasses.replace(vocabulary_for(tokenizer, CODEBOOK, GRID), special_names=("boi", "eoi", "uncond"))
    extend_tokenizer(tokenizer, old_vocab)
    resize_embeddings(model, old_vocab)
    save_unified_lm(model, tokenizer, old_vocab, tmp_path / "old")

    old_model, old_tokenizer, _ = load_unified_lm(tmp_path / "old")
    model, tokenizer, vocab = build_pretrained_lm(str(tmp_path / "old"), CODEBOOK, GRID)
    added = len(SPECIALS) - 3
    assert vocab.can_rewrite and vocab.image_offset == old_vocab.image_offset + added
    assert tokenizer.convert_ids_to_tokens([vocab.rewrite_id, vocab.image_offset]) == ["<|rewrite|>", "<|img_0|>"]
    caption = "a small red circle at the top"
    assert encode_text(tokenizer, caption) == encode_text(old_tokenizer, caption)
    codes = torch.randint(0, CODEBOOK, GRID, generator=torch.Generator().manual_seed(0))
    model.eval()
    for make in (lambda v, t: text_to_image_example(encode_text(t, caption), codes, v),
                 lambda v, t: captioning_example(codes, encode_text(t, caption), v)):
        with torch.no_grad():
            before = old_model(torch.tensor([make(old_vocab, old_tokenizer).input_ids])).logits[0]
            after = model(torch.tensor([make(vocab, tokenizer).input_ids])).logits[0]
        without_new_rows = torch.cat([after[:, : vocab.rewrite_id], after[:, vocab.rewrite_id + added :]], dim=1)
        torch.testing.assert_close(without_new_rows, before)
    save_unified_lm(model, tokenizer, vocab, tmp_path / "new")  # checks every id is named where the layout says
    assert load_unified_lm(tmp_path / "new")[2] == vocab


def test_a_unitok_folder_is_reloaded_as_it_is(tmp_path):
    save_tiny_hub_model("qwen2", tmp_path / "hub")
    model, tokenizer, vocab = build_pretrained_lm(str(tmp_path / "hub"), CODEBOOK, GRID)
    save_unified_lm(model, tokenizer, vocab, tmp_path / "lm")
    _, _, again = build_pretrained_lm(str(tmp_path / "lm"), CODEBOOK, GRID)
    assert again == vocab
    with pytest.raises(UserError, match="48 codes"):
        build_pretrained_lm(str(tmp_path / "lm"), 48, GRID)


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ({"grid": (3, 3)}, r"\(3, 3\) code grid"),  # seen in the codes themselves
        ({"meta_extra": {"codebook_size": 48, "grid_size": list(GRID)}},  # recorded by `unitok tokenize`
         r"the code shards .* come from an image tokenizer with 48 codes on a \(2, 3\) grid, but the LM is "
         r"built for 24 codes on a \(2, 3\) grid"),
        ({"codebook": 40}, r"outside the vocabulary's 24 codes"),
    ],
)
def test_shards_that_do_not_fit_the_vocabulary_fail_before_training(tmp_path, shards, message):
    save_tiny_hub_model("gpt2", tmp_path / "hub")
    write_code_shards(tmp_path / "train", 4, **shards)
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID)
    data = CodeShardDataModule(train_shards=str(tmp_path / "train"), batch_size=2, samples_per_epoch=4, num_workers=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(UserError, match=message):
        trainer.fit(module, data)


def test_images_without_captions_stay_out_of_lm_training(tmp_path):
    """`unitok data folder` keeps uncaptioned images (they train the image tokenizer); the LM sees
    none of them, and refuses shards in which no image has a caption."""
    uncaptioned_code = CODEBOOK - 1  # only uncaptioned samples use it, so their sequences are easy to spot
    for name, captioned in (("train", [True, False] * 4), ("val", [False, True]), ("none", [False, False])):
        with ShardWriter(tmp_path / name, prefix="codes") as writer:
            for index, (has_text, scene) in enumerate(zip(captioned, scenes(len(captioned)), strict=True)):
                codes = np.full(GRID, uncaptioned_code if not has_text else index % 4, np.int16)
                writer.write({"__key__": f"{index:06d}", "codes.npy": codes, "json": {},
                              "txt": shapes.canonical_caption(scene) if has_text else ""})
    save_tiny_hub_model("gpt2", tmp_path / "hub")
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), codebook_size=CODEBOOK, grid=GRID)
    seen, step = [], module._step
    module._step = lambda batch, stage: seen.append(batch["input_ids"]) or step(batch, stage)
    data = CodeShardDataModule(train_shards=str(tmp_path / "train"), val_shards=str(tmp_path / "val"), batch_size=2,
                               samples_per_epoch=8, num_workers=0, shuffle_buffer=1)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data)
    assert len(seen) > 4  # training and validation batches
    assert not any((ids == module.vocabulary.image_offset + uncaptioned_code).any() for ids in seen)

    data = CodeShardDataModule(train_shards=str(tmp_path / "none"), batch_size=2, samples_per_epoch=8, num_workers=0)
    with pytest.raises(UserError, match="no sample in .* has a caption"):
        trainer.fit(module, data)


def test_loading_fails_clearly_when_folder_parts_disagree(tmp_path):
    save_tiny_hub_model("llama", tmp_path / "hub")
    model, tokenizer, vocab = build_pretrained_lm(str(tmp_path / "hub"), CODEBOOK, GRID)
    out = save_unified_lm(model, tokenizer, vocab, tmp_path / "lm")
    data = json.loads((out / VOCABULARY_FILE).read_text())
    data["codebook_size"] = CODEBOOK + 8
    data.pop("layout")
    (out / VOCABULARY_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match="embedding rows"):
        load_unified_lm(out)


# -- LightningCLI: fit, resume, export, load in a fresh process ---------------------------------


def write_config(path, tmp_path, max_steps: int, image_positions: bool = False) -> None:
    path.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer:
          accelerator: cpu
          max_steps: {max_steps}
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path / "run"}
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args:
                dirpath: {tmp_path / "ckpt"}
                save_last: true
                save_top_k: 0
                every_n_train_steps: 2
        model:
          codebook_size: {CODEBOOK}
          grid: [{GRID[0]}, {GRID[1]}]
          bpe_vocab_size: 300
          scratch: {{hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 2, intermediate_size: 64}}
          warmup_steps: 1
          image_positions: {str(image_positions).lower()}
        data:
          train_shards: {tmp_path / "train"}
          val_shards: {tmp_path / "val"}
          batch_size: 4
          samples_per_epoch: 8
          num_workers: 0
        """))


FRESH_PROCESS_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, -1]
print(json.dumps({"vocab_size": model.config.vocab_size, "tokens": len(tokenizer),
                  "boi": tokenizer.convert_tokens_to_ids("<|boi|>"), "logits": logits.tolist()}))
"""


def test_cli_fits_resumes_exports_and_the_export_loads_with_plain_transformers(tmp_path, capsys):
    write_code_shards(tmp_path / "train", 8)
    write_code_shards(tmp_path / "val", 4, seed=1)
    config = tmp_path / "lm.yaml"
    write_config(config, tmp_path, max_steps=2)
    assert unitok_main(["lm", "fit", "--config", str(config)]) == 0
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2

    # Resume: the run continues at step 2, so only 2 of the 4 steps run again.
    write_config(config, tmp_path, max_steps=4)
    cli = run_lm_cli(["--config", str(config)], run=False)
    steps_run = []
    training_step = cli.model.training_step
    cli.model.training_step = lambda batch, batch_idx: steps_run.append(batch_idx) or training_step(batch, batch_idx)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last))
    assert len(steps_run) == 2 and torch.load(last, weights_only=True)["global_step"] == 4

    out = tmp_path / "export"
    assert unitok_main(["lm", "export", str(last), str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", VOCABULARY_FILE} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.py")) and not list(out.glob("*.bin"))

    model, tokenizer, vocab = load_unified_lm(out)
    ids = [vocab.boi_id, *range(vocab.image_offset, vocab.image_offset + 6), vocab.eoi_id]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, -1]
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_LOAD, str(out), json.dumps(ids)],
                            capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["vocab_size"] == loaded["tokens"] == vocab.size
    assert loaded["boi"] == vocab.boi_id
    assert torch.allclose(torch.tensor(loaded["logits"]), expected, atol=1e-5)

    assert unitok_main(["lm", "export", str(tmp_path / "missing.ckpt"), str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_image_position_table_is_trained_checkpointed_and_exported(tmp_path):
    write_code_shards(tmp_path / "train", 8)
    write_code_shards(tmp_path / "val", 4, seed=1)
    config = tmp_path / "lm.yaml"
    write_config(config, tmp_path, max_steps=2, image_positions=True)
    cli = run_lm_cli(["--config", str(config)], run=False)
    initial = image_position_table(cli.model.model).weight.detach().clone()
    cli.trainer.fit(cli.model, cli.datamodule)
    trained = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"][f"model.{ATTRIBUTE}.weight"]
    assert not torch.equal(trained, initial)  # in the optimiser, and saved with the checkpoint

    out = tmp_path / "export"
    assert unitok_main(["lm", "export", str(tmp_path / "ckpt" / "last.ckpt"), str(out)]) == 0
    model, _, vocab = load_unified_lm(out)
    torch.testing.assert_close(image_position_table(model).weight, trained)
    ids = torch.tensor([[vocab.boi_id, *range(vocab.image_offset, vocab.image_offset + 6), vocab.eoi_id]])
    with torch.no_grad():  # the table counts: the plain forward (without it) differs
        assert not torch.allclose(lm_forward(model, vocab, ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["shapes-tiny", "qwen2.5-0.5b"])
def test_shipped_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        unitok_main(["lm", "fit", "--config", f"configs/lm/{name}.yaml", "--print_config"])
    assert exit_info.value.code == 0
    assert "train_shards" in capsys.readouterr().out


def test_a_second_config_overrides_only_what_it_names(capsys, tmp_path):
    """A follow-up stage (e.g. fine-tuning an export) is the shipped config plus a short override."""
    stage = tmp_path / "stage.yaml"
    stage.write_text(textwrap.dedent("""
        trainer:
          max_time: "00:00:15:00"
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {dirpath: runs/stage/checkpoints, save_last: true}
        model:
          pretrained: runs/shapes-tiny/export
        data:
          editing: 0.3
    """))
    with pytest.raises(SystemExit) as exit_info:
        unitok_main(["lm", "fit", "--config", "configs/lm/shapes-tiny.yaml", "--config", str(stage), "--print_config"])
    assert exit_info.value.code == 0
    import yaml

    composed = yaml.safe_load(capsys.readouterr().out)
    assert composed["model"]["pretrained"] == "runs/shapes-tiny/export"  # the stage's own
    assert composed["data"]["editing"] == 0.3 and composed["trainer"]["max_time"] == "00:00:15:00"
    assert [c["init_args"].get("dirpath") for c in composed["trainer"]["callbacks"]] == [
        "runs/stage/checkpoints"]  # the list is replaced, not appended to
    assert composed["data"]["answering"] == 0.13 and composed["model"]["image_positions"]  # from the base


def test_codebook_and_grid_come_from_the_image_tokenizer(tmp_path):
    from tokenizer.model import VQTokenizer

    VQTokenizer(image_size=16, block_out_channels=(8, 8), norm_num_groups=4, latent_channels=8,
                quantizer="fsq", fsq_levels=(4, 3)).save_pretrained(tmp_path / "vq")
    save_tiny_hub_model("qwen2", tmp_path / "hub")
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), image_tokenizer=str(tmp_path / "vq"))
    assert (module.vocabulary.codebook_size, module.vocabulary.grid) == (12, (8, 8))
    with pytest.raises(UserError, match="contradict"):
        UnifiedLMModule(pretrained=str(tmp_path / "hub"), image_tokenizer=str(tmp_path / "vq"), codebook_size=16)
    with pytest.raises(UserError, match="model.image_tokenizer"):
        UnifiedLMModule(pretrained=str(tmp_path / "hub"))


def test_a_scratch_lm_too_short_for_an_image_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match=r"max_positions is 64, too short for one image of 16x16 = 256 codes.*"
                                        r"at least 268"):
        UnifiedLMModule(codebook_size=32, grid=(16, 16), tokenizer_captions=str(tmp_path / "unused"),
                        scratch={"max_positions": 64})
    check_context_holds_an_image(268, (16, 16))  # just enough
