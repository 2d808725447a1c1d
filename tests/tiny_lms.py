"""Tiny random LMs over a UniTok vocabulary, shared by the decoding tests: a Llama (the fast
``LlamaDecoder`` path) and a Qwen2 (the generic transformers path) of the same small size."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from unitok.lm.model import ScratchConfig, build_scratch_lm
from unitok.vocabulary import UnifiedVocabulary


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
