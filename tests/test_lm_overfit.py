"""A tiny unified LM memorises 16 (caption, codes) pairs in both directions, and its rewrites.

The whole training stack runs (code shards -> DataModule -> LightningModule -> Trainer); then
greedy text-to-image must reproduce every pair's codes, greedy captioning every caption, and the
generation sampler's rewriting must restate a paraphrase of every pair as its caption. If the
sequence formats, labels, masks or prompts disagree anywhere, this fails.
"""

import lightning as L
import numpy as np
import pytest
import torch
from transformers import DynamicCache

from generation.sampler import generate_rewrites
from unitok.data import shapes, shapes_language
from unitok.data.shards import ShardWriter
from unitok.lm.data import CodeShardDataModule
from unitok.lm.model import ScratchConfig
from unitok.lm.module import UnifiedLMModule
from unitok.lm.sequences import Prompt, captioning_prompt, text_to_image_prompt
from unitok.lm.text_tokenizer import decode_text, encode_text

GRID, CODEBOOK, PAIRS = (4, 4), 64, 16


def write_pairs(out_dir) -> tuple[list[str], list[list[str]], torch.Tensor]:
    rng = np.random.default_rng(0)
    captions, paraphrases, codes = [], [], rng.integers(0, CODEBOOK, (PAIRS, *GRID))
    with ShardWriter(out_dir, prefix="codes") as writer:
        for index in range(PAIRS):
            scene = shapes.random_scene(rng)
            captions.append(shapes.canonical_caption(scene))
            paraphrases.append([shapes_language.describe(scene, rng, detail="full", noise=False).text for _ in range(2)])
            writer.write({"__key__": f"{index:04d}", "codes.npy": codes[index].astype(np.int16),
                          "txt": captions[-1], "json": {"scene": scene.to_dict(), "paraphrases": paraphrases[-1]}})
    return captions, paraphrases, torch.from_numpy(codes)


@torch.no_grad()
def greedy(model, prompt: Prompt, steps: int, allowed: torch.Tensor) -> torch.Tensor:
    """Greedy decoding with a KV cache, restricted to ``allowed`` ids (the real sampler lives in generation/)."""
    cache, mask, positions = DynamicCache(), prompt.attention_mask, prompt.position_ids
    logits = model(input_ids=prompt.input_ids, attention_mask=mask, position_ids=positions,
                   cache=cache, use_cache=True).logits
    generated = []
    for _ in range(steps):
        token = logits[:, -1].masked_fill(~allowed, float("-inf")).argmax(-1, keepdim=True)
        generated.append(token)
        mask, positions = torch.cat([mask, torch.ones_like(token)], 1), positions[:, -1:] + 1
        logits = model(input_ids=token, attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True).logits
    return torch.cat(generated, 1)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread avoids the contention overhead of sharing busy cores (~8x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_lm_overfits_both_directions_and_rewrites(tmp_path, one_thread):
    captions, paraphrases, codes = write_pairs(tmp_path / "train")
    L.seed_everything(0)
    module = UnifiedLMModule(
        tokenizer_captions=str(tmp_path / "train"), bpe_vocab_size=384, codebook_size=CODEBOOK, grid=GRID,
        scratch=ScratchConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128),
        learning_rate=3e-3, warmup_steps=20, weight_decay=0.0,
    )
    data = CodeShardDataModule(train_shards=str(tmp_path / "train"), batch_size=32, samples_per_epoch=320,
                               num_workers=0, shuffle_buffer=PAIRS, text_to_image=0.4, rewriting=0.3,
                               paraphrase=0.0)
    trainer = L.Trainer(max_steps=250, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    model, tokenizer, vocab = module.model.eval(), module.text_tokenizer, module.vocabulary

    drawn = greedy(model, text_to_image_prompt([encode_text(tokenizer, c) for c in captions], vocab),
                   vocab.tokens_per_image, vocab.image_mask())
    assert torch.equal(vocab.from_lm_ids(drawn), codes)

    written = greedy(model, captioning_prompt(codes, vocab), 80, vocab.text_mask())
    texts = [decode_text(tokenizer, row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row)
             for row in written.tolist()]
    assert texts == captions

    restated = generate_rewrites(model, vocab, [encode_text(tokenizer, p[0]) for p in paraphrases], max_new_tokens=80)
    assert [decode_text(tokenizer, rewrite.ids) for rewrite in restated] == captions
    assert all(rewrite.finished and not rewrite.unknown for rewrite in restated)
