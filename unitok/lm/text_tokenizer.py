"""The LM's text tokenizer: train one on captions, extend it with UniTok's tokens, check it.

After ``extend_tokenizer`` a plain ``AutoTokenizer`` names every id of the unified vocabulary
(``<|boi|>``, ``<|eoi|>``, ``<|uncond|>``, ``<|img_k|>``), so an exported folder is a normal Hugging
Face model + tokenizer. UniTok itself never tokenizes those strings: image segments are built at the
id level (see ``unitok.lm.sequences``).
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from unitok.errors import UserError
from unitok.vocabulary import SPECIALS, UnifiedVocabulary

END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(captions: Iterable[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``captions`` (the embedded default's text vocabulary).

    A small vocabulary (a few hundred ids) turns each Shapes word into about one token, which
    keeps sequences short and the text part of the embedding tiny. Byte-level means any input
    text still tokenizes. ``<|endoftext|>`` ends captions and pads batches.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise UserError(f"a byte-level BPE needs vocab_size > {len(alphabet)}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet, show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def vocabulary_for(
    tokenizer: PreTrainedTokenizerBase, codebook_size: int, grid: tuple[int, int],
    special_names: tuple[str, ...] = tuple(SPECIALS),
) -> UnifiedVocabulary:
    """The unified layout for a (not yet extended) text tokenizer and an image tokenizer's codes.

    BOS policy, decided here once: a sequence starts with the tokenizer's BOS only when the family
    has a BOS distinct from EOS (Llama: yes; Qwen2: no BOS; GPT-2: its BOS is its EOS, and GPT-2
    does not prepend it). Text ids are ``[0, len(tokenizer))``; rows a checkpoint pads beyond that
    (Qwen2.5 has 151,936 rows for 151,665 tokens) are dropped when the embedding is resized.
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the text tokenizer has no EOS token; captions need one to end (set eos_token)")
    bos = tokenizer.bos_token_id
    bos = bos if bos is not None and bos != tokenizer.eos_token_id else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return UnifiedVocabulary(
        text_size=len(tokenizer), codebook_size=codebook_size, grid=tuple(grid),
        eos_id=tokenizer.eos_token_id, pad_id=pad, bos_id=bos, special_names=special_names,
    )


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, vocab: UnifiedVocabulary) -> None:
    """Add the special and image-code tokens so the tokenizer's ids match the layout exactly."""
    if len(tokenizer) != vocab.text_size:
        raise UserError(f"cannot extend a tokenizer of {len(tokenizer)} ids for a layout with "
                        f"{vocab.text_size} text ids (was it extended already?)")
    tokenizer.add_tokens(vocab.special_tokens + vocab.image_tokens, special_tokens=True)
    check_tokenizer(tokenizer, vocab)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, vocab: UnifiedVocabulary) -> None:
    """Fail clearly unless the tokenizer names every id of the layout where the layout puts it."""
    problems = []
    if len(tokenizer) != vocab.size:
        problems.append(f"tokenizer has {len(tokenizer)} ids, the vocabulary has {vocab.size}")
    expected = {token: vocab.special_id(name) for name, token in zip(vocab.special_names, vocab.special_tokens, strict=True)}
    expected[vocab.image_tokens[0]] = vocab.image_offset
    expected[vocab.image_tokens[-1]] = vocab.size - 1
    for token, token_id in expected.items():
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != token_id:
            problems.append(f"{token} has id {actual}, the vocabulary puts it at {token_id}")
    if tokenizer.eos_token_id != vocab.eos_id:
        problems.append(f"tokenizer EOS is {tokenizer.eos_token_id}, the vocabulary says {vocab.eos_id}")
    if problems:
        raise UserError("text tokenizer does not match the UniTok vocabulary: " + "; ".join(problems)
                        + ". Use the tokenizer saved with this LM.")


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Caption/prompt text -> text ids, without BOS/EOS (sequences add those, see sequences.py).

    ``split_special_tokens``: a prompt that contains ``<|boi|>``, ``<|img_7|>`` or ``<|endoftext|>``
    is text like any other (byte-level pieces), never the control token, so user text cannot end a
    caption early or forge image codes.
    """
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: Iterable[int]) -> str:
    """Text ids -> caption, dropping special and image tokens."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
