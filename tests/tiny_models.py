"""Tiny random models shared by the tests: one place for their sizes.

- ``TINY_LM`` + ``TINY_IMAGE_TOKENIZER``: the pipeline of the pipeline/CLI tests (a 2-layer Llama,
  a 16x16 FSQ tokenizer with a 4x4 code grid of 48 codes, 64 positions of context);
- ``TINY_VQ``: the image tokenizer of the tokenizer tests (32x32 -> 16x16 codes, VQ);
- ``tiny_llama`` / ``tiny_qwen``: a Llama (the fast ``LlamaDecoder`` path) and a Qwen2 (the generic
  transformers path) of the same small size, for the decoding tests.
"""

import dataclasses

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from generation.random_model import random_pipeline
from tokenizer.model import VQTokenizer
from unitok.lm.model import ScratchConfig, build_scratch_lm
from unitok.vocabulary import UnifiedVocabulary

TINY_LM = ScratchConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64,
                        max_positions=64)
TINY_IMAGE_TOKENIZER = dict(image_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4,
                            latent_channels=8, quantizer="fsq", fsq_levels=(4, 4, 3))  # 48 codes
TINY_VQ = dict(image_size=32, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=16,
               quantizer="vq", codebook_size=32, codebook_dim=4)


def save_tiny_image_tokenizer(folder):
    """An untrained ``TINY_IMAGE_TOKENIZER`` saved as an exported tokenizer folder; returns ``folder``."""
    VQTokenizer(kmeans_init=False, **TINY_IMAGE_TOKENIZER).save_pretrained(folder)
    return folder


def tiny_pipeline(initializer_range: float = TINY_LM.initializer_range, **options):
    """The random pipeline of ``TINY_LM`` and ``TINY_IMAGE_TOKENIZER`` (``random_pipeline`` options).
    A wide ``initializer_range`` (0.3) makes its greedy captions depend on the image."""
    lm = dataclasses.replace(TINY_LM, initializer_range=initializer_range)
    return random_pipeline(lm, TINY_IMAGE_TOKENIZER, text_vocab_size=290, **options)


def tiny_llama(text_tokenizer, codebook: int, grid: tuple[int, int], max_positions: int, tie_embeddings: bool = True):
    """(Llama in eval mode, vocabulary); extends ``text_tokenizer``, so build one per tokenizer."""
    torch.manual_seed(0)
    config = ScratchConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                           max_positions=max_positions, tie_embeddings=tie_embeddings)
    model, vocab = build_scratch_lm(text_tokenizer, codebook, grid, config)
    return model.eval(), vocab


def tiny_qwen(vocab: UnifiedVocabulary, max_positions: int) -> Qwen2ForCausalLM:
    """A Qwen2 of the same size over ``vocab``, in eval mode."""
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=vocab.size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
    return Qwen2ForCausalLM(config).eval()
