"""Autoregressive sampling of image codes (text-to-image with batched classifier-free guidance:
conditional and unconditional rows share each forward pass), of captions and of prompt rewrites.
Image ``k`` of prompt ``i`` is row ``i * num_images_per_prompt + k``; one generator per row makes
every image independent of its batch (``token_choice.uniform_streams``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from transformers import PreTrainedModel

from generation import llama_decoder
from generation.decoder import CachedDecoder
from generation.settings import SamplingOptions
from generation.step_hook import call_step_hook
from generation.token_choice import choose_tokens, guide, uniform_streams
from unitok.lm.sequences import (
    Prompt,
    answering_prompt,
    captioning_prompt,
    editing_prompt,
    rewriting_prompt,
    text_to_image_prompt,
    unconditional_prompt,
)
from unitok.vocabulary import UnifiedVocabulary

Generators = torch.Generator | Sequence[torch.Generator] | None
# Called with the number of tokens just decoded (``tqdm.update`` fits).
Progress = Callable[[int], Any]
SAMPLING = SamplingOptions()  # plain sampling at temperature 1: the text-to-image default
GREEDY = SamplingOptions(temperature=0.0)  # the captioning default: deterministic captions


@torch.inference_mode()
def sample_image_codes(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    prompts: Sequence[Sequence[int]],
    *,
    num_images_per_prompt: int = 1,
    guidance_scale: float | Sequence[float] | None = 3.0,
    options: SamplingOptions = SAMPLING,
    generator: Generators = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Draw ``[len(prompts) * num_images_per_prompt, h, w]`` image codes for captions' text ids.

    ``guidance_scale`` is one scale for all prompts, one per prompt, or None for no guidance (no
    unconditional rows at all; nor where every scale of a forward pass is 1, which is the
    conditional logits exactly). ``batch_size``: images per forward pass (None: all). Exactly
    ``h * w`` codes are drawn per image, each from the image-code range only; ``<|eoi|>`` follows
    by construction and is never sampled.
    """
    if num_images_per_prompt <= 0:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    text_ids = [list(ids) for ids in prompts for _ in range(num_images_per_prompt)]
    scales = _row_scales(guidance_scale, len(prompts), num_images_per_prompt, model.device)
    batch = batch_size or len(text_ids)
    if isinstance(generator, Sequence) and len(generator) != len(text_ids):
        raise ValueError(f"got {len(generator)} generators for {len(text_ids)} images: pass one per image, or one")
    return torch.cat([
        _sample_rows(model, vocab, text_ids[start : start + batch], None if scales is None else scales[start : start + batch],
                     options, generator[start : start + batch] if isinstance(generator, Sequence) else generator, progress)
        for start in range(0, len(text_ids), batch)
    ])


def _sample_rows(
    model: PreTrainedModel, vocab: UnifiedVocabulary, text_ids: list[list[int]], scales: torch.Tensor | None,
    options: SamplingOptions, generator: Generators, progress: Progress | None,
) -> torch.Tensor:
    """One forward pass per code for these rows (and their unconditional twins when guided)."""
    rows = len(text_ids)
    prompt = text_to_image_prompt(text_ids, vocab)
    if scales is not None and bool((scales == 1.0).all()):
        scales = None
    if scales is not None:
        prompt = stack_prompts(prompt, unconditional_prompt(rows, vocab), pad_id=vocab.pad_id)
    return _sample_codes_after(model, vocab, prompt, scales, options, generator, progress)


def _sample_codes_after(
    model: PreTrainedModel, vocab: UnifiedVocabulary, prompt: Prompt, scales: torch.Tensor | None,
    options: SamplingOptions, generator: Generators, progress: Progress | None,
) -> torch.Tensor:
    """Image codes after prompts that end in ``<|boi|>``; with ``scales``, the prompt's second half
    are the unconditional twins of the first and guide them."""
    rows = prompt.input_ids.shape[0] // (1 if scales is None else 2)
    steps = vocab.tokens_per_image
    code_range = range(vocab.image_offset, vocab.image_offset + vocab.codebook_size)
    # Room for every code and the closing <|eoi|>, so the whole sequence fits the context.
    decoder = open_decoder(model, vocab, prompt, code_range, max_new_tokens=steps + 1)
    uniforms = uniform_streams(generator, rows, steps, model.device)
    codes = torch.empty(rows, steps, dtype=torch.long, device=model.device)
    logits = decoder.prefill()
    for t in range(steps):
        call_step_hook()
        if scales is not None:
            logits = guide(logits[:rows].float(), logits[rows:].float(), scales)
        codes[:, t] = choose_tokens(logits, uniforms[:, t], options)
        if t + 1 < steps:
            ids = codes[:, t] + vocab.image_offset
            logits = decoder.step(ids if scales is None else ids.repeat(2))
        if progress is not None:
            progress(rows)
    return rearrange(codes, "n (h w) -> n h w", h=vocab.grid[0], w=vocab.grid[1])


def open_decoder(
    model: PreTrainedModel, vocab: UnifiedVocabulary, prompt: Prompt, id_range: range, max_new_tokens: int
) -> CachedDecoder | llama_decoder.LlamaDecoder:
    """The fast Llama path when it applies to ``model``, else the generic transformers path."""
    if llama_decoder.supports(model):
        return llama_decoder.LlamaDecoder(model, vocab, prompt, id_range, max_new_tokens)
    return CachedDecoder(model, vocab, prompt, id_range, max_new_tokens)


def _row_scales(
    guidance_scale: float | Sequence[float] | None, num_prompts: int, per_prompt: int, device: torch.device
) -> torch.Tensor | None:
    if guidance_scale is None:
        return None
    if isinstance(guidance_scale, int | float):
        guidance_scale = [float(guidance_scale)] * num_prompts
    if len(guidance_scale) != num_prompts:
        raise ValueError(f"got {len(guidance_scale)} guidance scales for {num_prompts} prompts")
    scales = torch.tensor([float(s) for s in guidance_scale], dtype=torch.float32, device=device)
    if not torch.isfinite(scales).all():
        raise ValueError(f"guidance scales must be finite, got {list(guidance_scale)}")
    return scales.repeat_interleave(per_prompt)


def stack_prompts(*prompts: Prompt, pad_id: int) -> Prompt:
    """Left-pad several prompt batches to one length and stack their rows, in order."""
    length = max(p.input_ids.shape[1] for p in prompts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (length - t.shape[1], 0), value=value)

    return Prompt(
        input_ids=torch.cat([pad(p.input_ids, pad_id) for p in prompts]),
        attention_mask=torch.cat([pad(p.attention_mask, 0) for p in prompts]),
        position_ids=torch.cat([pad(p.position_ids, 0) for p in prompts]),
    )


@torch.inference_mode()
def generate_captions(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    codes: torch.Tensor,
    *,
    max_new_tokens: int = 64,
    options: SamplingOptions = GREEDY,
    generator: Generators = None,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Caption image codes ``[B, h, w]``: text ids per image, without the closing EOS.

    Decoding is restricted to text ids, greedy by default, and stops at EOS or after
    ``max_new_tokens`` tokens. Rows that have finished are fed EOS until the batch is done.
    """
    captions, _, _ = _generate_text(model, vocab, captioning_prompt(codes.cpu(), vocab), max_new_tokens, options,
                                    generator, progress)
    return captions


@dataclass(frozen=True)
class Rewrite:
    """A greedy rewrite: its text ids (the normal form), what the LM says it cannot draw (ids after
    ``<|unknown|>``), whether it reached EOS and the lowest probability of any token it chose."""

    ids: list[int]
    unknown: list[int]
    finished: bool
    confidence: float


@torch.inference_mode()
def generate_rewrites(
    model: PreTrainedModel, vocab: UnifiedVocabulary, text_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64
) -> list[Rewrite]:
    """Greedy rewrites ``[bos] prompt <|rewrite|> ...`` of prompts' text ids (``unitok.lm.sequences``):
    the normal form the LM restates each prompt as and, for an LM that has ``<|unknown|>``, the
    words it says it cannot draw."""
    extra = [vocab.special_id("unknown")] if vocab.has("unknown") else []
    rows, finished, confidence = _generate_text(model, vocab, rewriting_prompt(text_ids, vocab), max_new_tokens,
                                                GREEDY, None, None, extra)
    rewrites = []
    for ids, done, sure in zip(rows, finished, confidence, strict=True):
        cut = ids.index(extra[0]) if extra and extra[0] in ids else len(ids)
        rewrites.append(Rewrite(ids[:cut], [i for i in ids[cut + 1:] if i not in extra], done, sure))
    return rewrites


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel, vocab: UnifiedVocabulary, codes: torch.Tensor, question_ids: Sequence[Sequence[int]],
    *, max_new_tokens: int = 16,
) -> list[list[int]]:
    """Greedy answers ``[bos] <boi> codes <eoi> question <|answer|> ...`` (text ids, without EOS)."""
    answers, _, _ = _generate_text(model, vocab, answering_prompt(codes.cpu(), question_ids, vocab), max_new_tokens,
                                   GREEDY, None, None)
    return answers


@torch.inference_mode()
def sample_edited_codes(
    model: PreTrainedModel, vocab: UnifiedVocabulary, codes: torch.Tensor, instruction_ids: Sequence[Sequence[int]],
    *, options: SamplingOptions = GREEDY, generator: Generators = None, progress: Progress | None = None,
) -> torch.Tensor:
    """``[N, h, w]`` codes of each image edited by its instruction
    (``[bos] <boi> codes <eoi> instruction <|edit|> <boi> ...``)."""
    prompt = editing_prompt(codes.cpu(), instruction_ids, vocab)
    return _sample_codes_after(model, vocab, prompt, None, options, generator, progress)


def _generate_text(
    model: PreTrainedModel, vocab: UnifiedVocabulary, prompt: Prompt, max_new_tokens: int, options: SamplingOptions,
    generator: Generators, progress: Progress | None, extra_ids: Sequence[int] = (),
) -> tuple[list[list[int]], list[bool], list[float]]:
    """Text ids decoded after each prompt row (without EOS; ``extra_ids`` are specials it may also
    write), whether each row reached EOS, and the lowest probability of a token each row chose."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rows = prompt.input_ids.shape[0]
    stop = max([vocab.text_size - 1, *extra_ids]) + 1
    banned = torch.ones(stop, dtype=torch.bool, device=model.device)
    banned[: vocab.text_size] = False
    banned[list(extra_ids)] = False
    decoder = open_decoder(model, vocab, prompt, range(stop), max_new_tokens)
    uniforms = uniform_streams(generator, rows, max_new_tokens, model.device)
    tokens = torch.full((rows, max_new_tokens), vocab.eos_id, dtype=torch.long, device=model.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=model.device)
    confidence = torch.ones(rows, device=model.device)
    logits = decoder.prefill()
    for t in range(max_new_tokens):
        call_step_hook()
        logits = logits.float().masked_fill(banned, -torch.inf)
        chosen = choose_tokens(logits, uniforms[:, t], options).masked_fill_(finished, vocab.eos_id)
        probability = logits.softmax(-1).gather(1, chosen[:, None]).squeeze(1)
        confidence = torch.where(finished, confidence, torch.minimum(confidence, probability))
        tokens[:, t] = chosen
        finished |= chosen == vocab.eos_id
        if progress is not None:
            progress(rows)
        if bool(finished.all()) or t + 1 == max_new_tokens:
            break
        logits = decoder.step(chosen)
    return [_until_eos(row, vocab.eos_id) for row in tokens.tolist()], finished.tolist(), confidence.tolist()


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids
