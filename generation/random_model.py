"""An untrained pipeline of a chosen size, for the benchmark and the tests (never for users).

Speed does not depend on what the weights learned, so the benchmark measures a random pipeline
of the default model's architecture when no trained one is given; tests build a tiny one in a
second. The text tokenizer is a byte-level BPE trained on Shapes captions, as the default's is.
"""

from __future__ import annotations

import numpy as np
import torch

from generation.pipeline import UniTokPipeline
from tokenizer.model import VQTokenizer
from unitok.data.shapes import canonical_caption, random_scene
from unitok.data.shapes_language import describe
from unitok.lm.image_positions import attach_image_positions
from unitok.lm.model import ScratchConfig, build_scratch_lm
from unitok.lm.text_tokenizer import train_bpe_tokenizer
from unitok.vocabulary import SPECIALS


def shapes_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` Shapes captions and paraphrases, alternating, from a seeded scene stream."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        scene = random_scene(rng)
        prompts.append(canonical_caption(scene) if i % 2 == 0 else describe(scene, rng).text)
    return prompts


def random_pipeline(
    lm_config: ScratchConfig | None = None,
    image_tokenizer_config: dict | None = None,
    text_vocab_size: int = 384,
    seed: int = 0,
    image_positions: bool = False,
    special_names: tuple[str, ...] = tuple(SPECIALS),
) -> UniTokPipeline:
    """A randomly initialised pipeline (eval mode): Llama ``lm_config`` (ScratchConfig defaults
    when None), a VQ tokenizer with ``image_tokenizer_config`` (VQTokenizer defaults when None)
    and a BPE of ``text_vocab_size``; ``image_positions`` gives the LM a grid-cell table, as the
    embedded default has; ``special_names`` the tasks its vocabulary knows (an older layout has fewer)."""
    torch.manual_seed(seed)
    text_tokenizer = train_bpe_tokenizer(shapes_prompts(500, seed), vocab_size=text_vocab_size)
    # No k-means init: an untrained codebook would otherwise be fitted to the first images encoded.
    image_tokenizer = VQTokenizer(**{"kmeans_init": False, **(image_tokenizer_config or {})}).eval()
    lm, vocabulary = build_scratch_lm(
        text_tokenizer, image_tokenizer.codebook_size, image_tokenizer.grid_size, lm_config or ScratchConfig(),
        special_names,
    )
    if image_positions:
        attach_image_positions(lm, vocabulary)
    return UniTokPipeline(lm=lm.eval(), text_tokenizer=text_tokenizer, image_tokenizer=image_tokenizer,
                          vocabulary=vocabulary)
