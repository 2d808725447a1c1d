"""Self-reranking: of several drawn candidates, keep the one the model itself judges best.

Two judges (``generation.settings.JUDGES``). The verdict: for an LM trained to verify (``[bos]
<boi> codes <eoi> prompt <|verify|> <|yes|>|<|no|>``) a candidate's score is the probability that
the model answers yes: does this image show the prompt? That reads any phrasing it was taught,
partial prompts and relations included, and is the per-image consistency score the pipeline
reports, but only once the verdict has been learned. The caption: ``log p(prompt | image)``, the
captioning sequence ``[bos] <boi> codes <eoi> prompt <eos>`` scored in one teacher-forced pass:
CLIP reranking (DALL-E) without a second model; it judges well as soon as the model captions well
(docs/results.md: "Which judge picks the drawing"), and its per-image consistency score is the
probability of the prompt's least likely token as the caption (``caption_consistency``).

Consensus. With a weight ``w`` the score gains ``w * log(candidates the model reads as the same
caption)``: how many of its own drawings the model reads alike is a second judge, which helps
where the prompt is worded unlike the captions the model writes. An image whose prompt is word
for word one of its candidates' readings is in the captioner's own language, where likelihood
alone judges best, and is reranked by likelihood alone. Why these choices: ``docs/sampling.md``.

Edits (``rerank_edits``) have no prompt to verify against: a candidate edit is judged by its
likelihood as the edit of its image by its instruction, plus the same consensus of readings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from generation.decoder import context_length
from generation.sampler import generate_captions
from generation.settings import model_judge
from generation.step_hook import call_step_hook
from unitok.lm.image_positions import lm_forward
from unitok.lm.sequences import (
    IGNORE,
    Example,
    captioning_example,
    collate,
    editing_example,
    next_token_losses,
    reading_budget,
    verifying_prompt,
)
from unitok.vocabulary import UnifiedVocabulary


@torch.inference_mode()
def rerank(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    codes: torch.Tensor,
    text_ids: Sequence[Sequence[int]],
    *,
    candidates: int,
    consensus_weight: float = 0.0,
    batch_size: int = 64,
    readings: Sequence[Sequence[int]] | None = None,
    judge: str | None = None,
) -> torch.Tensor:
    """The best of each image's candidates: ``[N, h, w]`` codes out of ``[N * K, h, w]``.

    Candidate ``j`` of image ``i`` is row ``i * K + j`` of ``codes`` and of ``text_ids`` (the
    image's prompt, once per candidate). ``judge`` (``generation.settings.JUDGES``; None: the
    model's own, ``model_judge``): "verdict" scores by ``verification_scores`` alone; "caption" by
    likelihood plus, with a consensus weight, the candidates' agreement (``readings``: each
    candidate's caption ids, when the caller has them).
    """
    if codes.shape[0] != len(text_ids) or codes.shape[0] % candidates:
        raise ValueError(f"{codes.shape[0]} candidates and {len(text_ids)} prompts do not make images of "
                         f"{candidates} candidates each")
    if (judge or model_judge(vocab)) == "verdict":
        return best_candidates(codes, verification_scores(model, vocab, codes, text_ids, batch_size=batch_size),
                               candidates)
    scores = prompt_log_likelihood(model, vocab, codes, text_ids, batch_size=batch_size)
    if consensus_weight:
        if readings is None:
            readings = read_candidates(model, vocab, codes, batch_size)
        consensus = consensus_log_counts(readings, candidates).masked_fill(
            reads_as_its_prompt(readings, text_ids, candidates), 0.0)
        scores = scores + consensus_weight * consensus.to(scores)
    return best_candidates(codes, scores, candidates)


@torch.inference_mode()
def rerank_edits(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    sources: torch.Tensor,
    instruction_ids: Sequence[Sequence[int]],
    edited: torch.Tensor,
    *,
    candidates: int,
    consensus_weight: float = 0.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """The best of each image's edited candidates: ``[N, h, w]`` codes out of ``[N * K, h, w]``.

    Candidate ``j`` of image ``i`` is row ``i * K + j`` of ``edited``, of ``sources`` (the image it
    edits) and of ``instruction_ids`` (its instruction), as in ``rerank``. A candidate is judged by the model's likelihood of
    it as the edit of its image by its instruction plus, with a consensus weight, the log of how
    many of the image's candidates the model reads as the same scene. Why: a greedy edit takes the
    likeliest code at every position, which for an unsure model is plain background wherever an
    object might start (an emptied canvas), while the scene most sampled edits agree on is the
    model's surest reading of the instruction. The verdict that judges drawings cannot judge an
    edit: there is no prompt to check it against.
    """
    if edited.shape[0] % candidates:
        raise ValueError(f"{edited.shape[0]} edited candidates do not make images of {candidates} candidates each")
    scores = edit_log_likelihood(model, vocab, sources, instruction_ids, edited, batch_size)  # checks the rows
    if consensus_weight:
        readings = read_candidates(model, vocab, edited, batch_size)
        scores = scores + consensus_weight * consensus_log_counts(readings, candidates).to(scores)
    return best_candidates(edited, scores, candidates)


def best_candidates(codes: torch.Tensor, scores: torch.Tensor, candidates: int) -> torch.Tensor:
    """Of each image's ``candidates`` rows of ``codes`` (row ``i * K + j``), the one with the
    highest score; ties go to the first."""
    images = codes.shape[0] // candidates
    best = scores.view(images, candidates).argmax(dim=1).to(codes.device)
    return codes.view(images, candidates, *codes.shape[1:])[torch.arange(images, device=codes.device), best]


def read_candidates(model: PreTrainedModel, vocab: UnifiedVocabulary, codes: torch.Tensor,
                    batch_size: int) -> list[list[int]]:
    """The model's greedy caption of every candidate, within what the context leaves after an image."""
    length = reading_budget(vocab, context_length(model))
    return [ids for start in range(0, codes.shape[0], batch_size)
            for ids in generate_captions(model, vocab, codes[start : start + batch_size], max_new_tokens=length)]


@torch.inference_mode()
def prompt_log_likelihood(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    codes: torch.Tensor,
    text_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> torch.Tensor:
    """``[N]`` log-probabilities of each ``text_ids[i]`` (then EOS) as the caption of ``codes[i]``."""
    return _log_likelihoods(model, vocab, _captioning_examples(vocab, codes, text_ids), batch_size)


@torch.inference_mode()
def caption_consistency(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    codes: torch.Tensor,
    text_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> tuple[torch.Tensor, list[int]]:
    """The model's own reading of image ``codes[i]`` against ``text_ids[i]``: ``[N]`` the
    probability of the least likely token of that text (then EOS) as the image's caption, and
    per image that token's index in ``text_ids[i]`` (``len(text_ids[i])``: the EOS, i.e. the
    image shows more than the text says).

    Why the least likely token and not the whole likelihood: a drawing with one wrong attribute
    makes one word of its caption unlikely, which a sum or mean over the caption dilutes, and that
    word tells the user what is wrong; a probability is a score in [0, 1] whatever the caption's
    length. Judged in the model's own captioning words (a prompt as written scores low when it is
    worded unlike any caption).
    """
    scores, positions = [], []
    for losses, targets in _teacher_forced(model, vocab, _captioning_examples(vocab, codes, text_ids), batch_size):
        worst = losses.argmax(-1)  # losses are 0 where there is no label, > 0 where there is
        first_label = (targets != IGNORE).int().argmax(-1)
        scores.append(losses.gather(1, worst[:, None]).squeeze(1).neg().exp())
        positions.extend((worst - first_label).clamp(min=0).tolist())  # all p = 1: any token, say the first
    return torch.cat(scores), positions


@torch.inference_mode()
def edit_log_likelihood(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    sources: torch.Tensor,
    instruction_ids: Sequence[Sequence[int]],
    edited: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """``[N]`` log-probabilities of each ``edited[i]`` (then ``<|eoi|>``) as ``sources[i]`` edited
    by ``instruction_ids[i]``."""
    if not sources.shape[0] == len(instruction_ids) == edited.shape[0]:
        raise ValueError(f"got {sources.shape[0]} images, {len(instruction_ids)} instructions and "
                         f"{edited.shape[0]} edited grids")
    return _log_likelihoods(model, vocab, [editing_example(source, ids, grid, vocab) for source, ids, grid
                                           in zip(sources.cpu(), instruction_ids, edited.cpu(), strict=True)],
                            batch_size)


def _captioning_examples(vocab: UnifiedVocabulary, codes: torch.Tensor,
                         text_ids: Sequence[Sequence[int]]) -> list[Example]:
    """Each ``text_ids[i]`` as the caption of ``codes[i]`` (one text per grid, checked)."""
    if len(text_ids) != codes.shape[0]:
        raise ValueError(f"got {len(text_ids)} prompts for {codes.shape[0]} code grids")
    return [captioning_example(grid, ids, vocab) for grid, ids in zip(codes.cpu(), text_ids, strict=True)]


def _log_likelihoods(model: PreTrainedModel, vocab: UnifiedVocabulary, examples: Sequence[Example],
                     batch_size: int) -> torch.Tensor:
    """``[N]`` summed log-probability of each example's labelled ids."""
    return torch.cat([-losses.sum(-1) for losses, _ in _teacher_forced(model, vocab, examples, batch_size)])


def _teacher_forced(model: PreTrainedModel, vocab: UnifiedVocabulary, examples: Sequence[Example],
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of ``examples``, one teacher-forced pass: ``next_token_losses`` (losses 0 where
    there is no label, and the shifted labels)."""
    for start in range(0, len(examples), batch_size):
        call_step_hook()
        batch = {k: v.to(model.device) for k, v in collate(examples[start : start + batch_size], vocab).items()}
        logits = lm_forward(model, vocab, batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        yield next_token_losses(logits, batch["labels"])


@torch.inference_mode()
def verification_scores(
    model: PreTrainedModel, vocab: UnifiedVocabulary, codes: torch.Tensor, text_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> torch.Tensor:
    """``[N]`` probability, by the model's own verdict, that image ``codes[i]`` shows prompt
    ``text_ids[i]``: ``p(<|yes|>) / (p(<|yes|>) + p(<|no|>))`` after ``<|verify|>``."""
    if len(text_ids) != codes.shape[0]:
        raise ValueError(f"got {len(text_ids)} prompts for {codes.shape[0]} code grids")
    yes, no = vocab.special_id("yes"), vocab.special_id("no")
    scores = []
    for start in range(0, codes.shape[0], batch_size):
        call_step_hook()
        prompt = verifying_prompt(codes[start : start + batch_size].cpu(), text_ids[start : start + batch_size], vocab)
        logits = lm_forward(model, vocab, prompt.input_ids.to(model.device),
                            attention_mask=prompt.attention_mask.to(model.device),
                            position_ids=prompt.position_ids.to(model.device)).logits[:, -1]
        scores.append(logits[:, [yes, no]].float().softmax(-1)[:, 0])
    return torch.cat(scores)


def consensus_log_counts(readings: Sequence[Sequence[int]], candidates: int) -> torch.Tensor:
    """``[N * K]`` log of how many of an image's ``K`` candidates have the same reading (caption
    ids) as each one; candidate ``j`` of image ``i`` is at ``i * K + j``."""
    if len(readings) % candidates:
        raise ValueError(f"{len(readings)} readings do not split into groups of {candidates} candidates")
    counts = []
    for start in range(0, len(readings), candidates):
        group = Counter(tuple(r) for r in readings[start : start + candidates])
        counts.extend(group[tuple(r)] for r in readings[start : start + candidates])
    return torch.tensor(counts, dtype=torch.float32).log()


def reads_as_its_prompt(readings: Sequence[Sequence[int]], text_ids: Sequence[Sequence[int]],
                        candidates: int) -> torch.Tensor:
    """``[N * K]`` bool, True for every candidate of an image when one of its candidates' readings
    is exactly the image's prompt (``text_ids`` holds one row per candidate, like ``readings``)."""
    if len(readings) != len(text_ids):
        raise ValueError(f"got {len(readings)} readings for {len(text_ids)} prompts")
    matches = torch.tensor([list(r) == list(t) for r, t in zip(readings, text_ids, strict=True)])
    return matches.view(-1, candidates).any(dim=1).repeat_interleave(candidates)


def candidate_generators(
    generators: torch.Generator | Sequence[torch.Generator] | None, rows: int, candidates: int
) -> list[torch.Generator]:
    """``rows * candidates`` generators, candidate ``j`` of row ``i`` at ``i * candidates + j``.

    With one generator per row, a row's candidates are seeded from its own generator only, so a
    reranked image still depends on nothing but its prompt, settings and generator.
    """
    if generators is None or isinstance(generators, torch.Generator):
        device = torch.device("cpu") if generators is None else generators.device
        seeds = torch.randint(0, 2**62, (rows * candidates,), generator=generators, device=device)
        return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    derived = []
    for generator in generators:
        seeds = torch.randint(0, 2**62, (candidates,), generator=generator, device=generator.device)
        derived.extend(torch.Generator(generator.device).manual_seed(int(s)) for s in seeds)
    return derived
