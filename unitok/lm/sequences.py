"""Sequence formats of the unified LM (text-to-image, unconditional, captioning, rewriting), built
at the id level, never by tokenizing marker strings; the generation prompts are the same
sequences cut where the model takes over, and the context budgets are computed beside them.
The formats and their losses are tabulated in ``docs/training.md``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unitok.vocabulary import UnifiedVocabulary

IGNORE = -100  # label of positions that carry no loss (torch cross_entropy's ignore_index)
WRITTEN_TOKENS = 64  # the most text ids the LM writes on its own for a reading (caption) or a rewrite
TASKS = ("text_to_image", "captioning", "rewriting", "answering", "verifying", "editing")  # index = ``task``
_TASK_SHARES = ("text_to_image", "rewriting", "answering", "verifying", "editing")  # the rest is captioning


@dataclass(frozen=True)
class TaskMix:
    """How training sequences are drawn from a sample (``SampleTexts``): each task's share, the
    rest captioning. A task the sample has no text for (no prompts, no questions, ...) draws a
    captioning sequence instead."""

    text_to_image: float = 0.5
    caption_dropout: float = 0.1  # text-to-image caption replaced by <|uncond|>, for CFG
    paraphrase: float = 0.5  # text-to-image prompt is one of the sample's prompts as written
    normal_form: float = 0.0  # else: a prompt's normal form (a partial one when it states little)
    rewriting: float = 0.0
    answering: float = 0.0
    verifying: float = 0.0
    editing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("caption_dropout", "paraphrase", "normal_form", *_TASK_SHARES):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TaskMix.{name} must be a probability, got {getattr(self, name)}")
        total = sum(getattr(self, name) for name in _TASK_SHARES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"TaskMix.{' + '.join(_TASK_SHARES)} must be at most 1 (the rest is captioning), "
                             f"got {total:g}")


@dataclass
class PromptIds:
    """One prompt of a sample, as text ids: how it was written, its normal form (None where the
    data has none) and the words in it the domain cannot draw (None: all drawable)."""

    text: list[int]
    normal: list[int] | None = None
    unknown: list[int] | None = None


@dataclass
class SampleTexts:
    """Everything one training sample offers besides its image codes."""

    caption: list[int]
    prompts: list[PromptIds] = field(default_factory=list)
    questions: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (question, answer)
    verdicts: list[tuple[list[int], bool]] = field(default_factory=list)  # (prompt, does the image match)
    edit: tuple[list[int], torch.Tensor] | None = None  # (instruction, the edited image's codes)
    target_codes: torch.Tensor | None = None  # what drawing the caption should give (default: the codes)


@dataclass
class Example:
    """One training sequence: ids, aligned labels (IGNORE where no loss) and its task index."""

    input_ids: list[int]
    labels: list[int]
    task: int


@dataclass
class Prompt:
    """A left-padded batch of prompts; ``position_ids`` count from 0 at each row's first real id."""

    input_ids: torch.Tensor  # (batch, length) long
    attention_mask: torch.Tensor  # (batch, length) long, 0 on padding
    position_ids: torch.Tensor  # (batch, length) long


def _bos(vocab: UnifiedVocabulary) -> list[int]:
    return [] if vocab.bos_id is None else [vocab.bos_id]


def _image_segment(code_ids: Sequence[int], vocab: UnifiedVocabulary) -> list[int]:
    return [vocab.boi_id, *code_ids, vocab.eoi_id]


def _code_ids(codes: torch.Tensor, vocab: UnifiedVocabulary) -> list[int]:
    return vocab.to_lm_ids(torch.as_tensor(codes)).tolist()


# -- training sequences ------------------------------------------------------------------------


def text_to_image_example(text_ids: Sequence[int] | None, codes: torch.Tensor, vocab: UnifiedVocabulary) -> Example:
    """``[bos] caption <boi> codes <eoi>``; ``text_ids=None`` is the unconditional (dropped) caption."""
    condition = _bos(vocab) + ([vocab.uncond_id] if text_ids is None else list(text_ids)) + [vocab.boi_id]
    target = _code_ids(codes, vocab) + [vocab.eoi_id]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("text_to_image"))


def captioning_example(codes: torch.Tensor, text_ids: Sequence[int], vocab: UnifiedVocabulary) -> Example:
    """``[bos] <boi> codes <eoi> caption <eos>`` with the loss on the caption and ``<eos>``."""
    condition = _bos(vocab) + _image_segment(_code_ids(codes, vocab), vocab)
    target = list(text_ids) + [vocab.eos_id]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("captioning"))


def rewriting_example(prompt_ids: Sequence[int], target_ids: Sequence[int], vocab: UnifiedVocabulary,
                      unknown_ids: Sequence[int] | None = None) -> Example:
    """``[bos] prompt <|rewrite|> target [<|unknown|> words] <eos>``, the loss on what follows
    ``<|rewrite|>``: the prompt's normal form (or reference caption) and what it cannot draw."""
    condition = _bos(vocab) + list(prompt_ids) + [vocab.rewrite_id]
    target = list(target_ids) + ([vocab.special_id("unknown"), *unknown_ids] if unknown_ids else []) + [vocab.eos_id]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("rewriting"))


def answering_example(codes: torch.Tensor, question_ids: Sequence[int], answer_ids: Sequence[int],
                      vocab: UnifiedVocabulary) -> Example:
    """``[bos] <boi> codes <eoi> question <|answer|> answer <eos>``, the loss on the answer and ``<eos>``."""
    condition = _bos(vocab) + _image_segment(_code_ids(codes, vocab), vocab) + list(question_ids) + \
        [vocab.special_id("answer")]
    target = list(answer_ids) + [vocab.eos_id]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("answering"))


def verifying_example(codes: torch.Tensor, prompt_ids: Sequence[int], matches: bool,
                      vocab: UnifiedVocabulary) -> Example:
    """``[bos] <boi> codes <eoi> prompt <|verify|> <|yes|>|<|no|>``: does the image show the prompt?"""
    condition = _bos(vocab) + _image_segment(_code_ids(codes, vocab), vocab) + list(prompt_ids) + \
        [vocab.special_id("verify")]
    target = [vocab.special_id("yes" if matches else "no")]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("verifying"))


def editing_example(codes: torch.Tensor, instruction_ids: Sequence[int], edited: torch.Tensor,
                    vocab: UnifiedVocabulary) -> Example:
    """``[bos] <boi> codes <eoi> instruction <|edit|> <boi> codes' <eoi>``, the loss on the edited
    codes and ``<eoi>``."""
    condition = _bos(vocab) + _image_segment(_code_ids(codes, vocab), vocab) + list(instruction_ids) + \
        [vocab.special_id("edit"), vocab.boi_id]
    target = _code_ids(edited, vocab) + [vocab.eoi_id]
    return Example(condition + target, [IGNORE] * len(condition) + target, TASKS.index("editing"))


def sample_example(codes: torch.Tensor, texts: SampleTexts, vocab: UnifiedVocabulary, mix: TaskMix,
                   rng: random.Random) -> Example:
    """Draw one training sequence for a sample according to ``mix``.

    Captioning targets the reference caption (so its output stays parseable); text-to-image draws
    the target codes from the caption, a prompt as written or a prompt's normal form; rewriting
    restates a prompt (or, one time in ``len(prompts) + 1``, the caption itself) as its normal
    form, or as the caption where the data has no normal forms.
    """
    draw, task = rng.random(), "captioning"
    for name in _TASK_SHARES:
        share = getattr(mix, name)
        if draw < share:
            task = name
            break
        draw -= share
    drawable = [p for p in texts.prompts if p.unknown is None]
    if task == "text_to_image":
        target = texts.target_codes if texts.target_codes is not None else codes
        if rng.random() < mix.caption_dropout:
            return text_to_image_example(None, target, vocab)
        if drawable and rng.random() < mix.paraphrase:
            return text_to_image_example(rng.choice(drawable).text, target, vocab)
        normals = [p.normal for p in drawable if p.normal is not None]
        if normals and rng.random() < mix.normal_form:
            return text_to_image_example(rng.choice(normals), target, vocab)
        return text_to_image_example(texts.caption, target, vocab)
    if task == "rewriting" and texts.prompts:
        source = rng.choice([*texts.prompts, PromptIds(texts.caption, texts.caption)])
        return rewriting_example(source.text, source.normal if source.normal is not None else texts.caption, vocab,
                                 source.unknown)
    if task == "answering" and texts.questions:
        return answering_example(codes, *rng.choice(texts.questions), vocab)
    if task == "verifying" and texts.verdicts:
        return verifying_example(codes, *rng.choice(texts.verdicts), vocab)
    if task == "editing" and texts.edit is not None:
        return editing_example(codes, texts.edit[0], texts.edit[1], vocab)
    return captioning_example(codes, texts.caption, vocab)


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy of a causal LM's logits ``[B, L, V]`` against ``labels [B, L]``:
    ``([B, L - 1] losses, 0 where the label is IGNORE; the shifted labels [B, L - 1])``."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return losses, targets


def collate(examples: Sequence[Example], vocab: UnifiedVocabulary, *, pack_length: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Rows of ``input_ids`` and ``labels`` (right-padded), and per position its ``sequence`` (index
    in ``examples``, -1 on padding) and ``task`` (-1 on padding).

    Unpacked (``pack_length`` None), each example is a row and ``attention_mask`` marks its ids.
    Packed, examples share rows of up to ``pack_length`` ids (or the longest example's length, if
    more; first fit, longest first) and ``position_ids`` count from 0 in each; with no
    ``attention_mask``, transformers then lets each example attend only to itself
    (``masking_utils.find_packed_sequence_indices``; the forward must run without a KV cache).
    Every loss is the same as unpacked, with far less padding: training batches mix sequences of
    50 to 160 ids, and unpacked every row pads to the longest.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    lengths = [len(e.input_ids) for e in examples]
    pack = pack_length is not None
    rows = _first_fit(lengths, max(pack_length, *lengths)) if pack else [[index] for index in range(len(examples))]
    length = max(sum(lengths[index] for index in row) for row in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, vocab.pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sequence = torch.full(shape, -1, dtype=torch.long)
    task = torch.full(shape, -1, dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            example, stop = examples[index], start + lengths[index]
            input_ids[row, start:stop] = torch.tensor(example.input_ids)
            labels[row, start:stop] = torch.tensor(example.labels)
            labels[row, start] = IGNORE  # the previous example's last position does not predict this one
            position_ids[row, start:stop] = torch.arange(lengths[index])
            sequence[row, start:stop], task[row, start:stop] = index, example.task
            start = stop
        # Padding counts its own positions from 0: a sequence of its own, attended by no example.
        position_ids[row, start:] = torch.arange(length - start)
    batch = {"input_ids": input_ids, "labels": labels, "sequence": sequence, "task": task}
    if pack:
        batch["position_ids"] = position_ids
    else:
        batch["attention_mask"] = (sequence >= 0).long()
    return batch


def _first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity`` (first fit, longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return rows


# -- generation prompts ------------------------------------------------------------------------


def left_pad(rows: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Left-pad id lists into a Prompt (generation appends on the right, so rows end together)."""
    if not rows:
        raise ValueError("a prompt batch needs at least one row")
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row):] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[i, length - len(row):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Prompt(input_ids, attention_mask, position_ids)


def text_to_image_prompt(text_ids: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] caption <boi>`` for a batch of captions (text ids from ``encode_text``)."""
    return left_pad([_bos(vocab) + list(ids) + [vocab.boi_id] for ids in text_ids], vocab)


def unconditional_prompt(batch_size: int, vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] <|uncond|> <boi>``: the empty caption of classifier-free guidance."""
    return left_pad([_bos(vocab) + [vocab.uncond_id, vocab.boi_id]] * batch_size, vocab)


def rewriting_prompt(text_ids: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] prompt <|rewrite|>`` for a batch of free-form prompts."""
    return left_pad([_bos(vocab) + list(ids) + [vocab.rewrite_id] for ids in text_ids], vocab)


def _image_then(codes: torch.Tensor, texts: Sequence[Sequence[int]], end: Sequence[int],
                vocab: UnifiedVocabulary) -> Prompt:
    code_ids = vocab.to_lm_ids(torch.as_tensor(codes)).tolist()
    if len(code_ids) != len(texts):
        raise ValueError(f"got {len(code_ids)} images for {len(texts)} texts")
    return left_pad([_bos(vocab) + _image_segment(row, vocab) + list(ids) + list(end)
                     for row, ids in zip(code_ids, texts, strict=True)], vocab)


def answering_prompt(codes: torch.Tensor, question_ids: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] <boi> codes <eoi> question <|answer|>``."""
    return _image_then(codes, question_ids, [vocab.special_id("answer")], vocab)


def verifying_prompt(codes: torch.Tensor, prompt_ids: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] <boi> codes <eoi> prompt <|verify|>``: the next id is <|yes|> or <|no|>."""
    return _image_then(codes, prompt_ids, [vocab.special_id("verify")], vocab)


def editing_prompt(codes: torch.Tensor, instruction_ids: Sequence[Sequence[int]], vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] <boi> codes <eoi> instruction <|edit|> <boi>``: the edited codes follow."""
    return _image_then(codes, instruction_ids, [vocab.special_id("edit"), vocab.boi_id], vocab)


def captioning_prompt(codes: torch.Tensor, vocab: UnifiedVocabulary) -> Prompt:
    """Prompts ``[bos] <boi> codes <eoi>`` for image codes of shape ``(batch, h, w)``."""
    code_ids = vocab.to_lm_ids(torch.as_tensor(codes))
    if code_ids.ndim != 2:
        raise ValueError(f"codes must be (batch, h, w), got shape {tuple(torch.as_tensor(codes).shape)}")
    return left_pad([_bos(vocab) + _image_segment(row, vocab) for row in code_ids.tolist()], vocab)


# -- context budgets ---------------------------------------------------------------------------
# ``context`` is the number of positions the LM was built for (None: no known limit).


def image_segment_length(vocab: UnifiedVocabulary) -> int:
    """Positions of ``[bos] <|boi|> codes <|eoi|>``, the start of a captioning sequence."""
    return len(_bos(vocab)) + 2 + vocab.tokens_per_image


def prompt_room(vocab: UnifiedVocabulary, context: int | None) -> int | None:
    """Prompt tokens that fit the context next to a whole image (None: no limit).

    The longest sequence a prompt takes part in is judging's ``[bos] <|boi|> codes <|eoi|> prompt
    <|verify|> <|yes|>`` (or, for an LM without verification, ``... prompt <eos>``; drawing's
    ``[bos] prompt <|boi|> codes <|eoi|>`` is shorter), so that is the one counted: every setting
    accepts the same prompts.
    """
    # verifying appends <|verify|> <|yes|>, captioning <eos>
    return None if context is None else context - image_segment_length(vocab) - (2 if vocab.has("verify") else 1)


def written_budget(context: int | None, prefix_length: int) -> int:
    """``WRITTEN_TOKENS``, or fewer where the context ends sooner after ``prefix_length`` positions."""
    return WRITTEN_TOKENS if context is None else max(1, min(WRITTEN_TOKENS, context - prefix_length))


def reading_budget(vocab: UnifiedVocabulary, context: int | None) -> int:
    """Caption tokens a reading of an image may run to: what the context leaves after the image."""
    return written_budget(context, image_segment_length(vocab))


def rewrite_budget(vocab: UnifiedVocabulary, context: int | None) -> int:
    """Tokens a rewrite may run to: what the context leaves after the longest accepted prompt's
    ``[bos] prompt <|rewrite|>``, and no more than a prompt may have. The same for every prompt,
    so a prompt's rewrite never depends on the prompts beside it in a batch."""
    room = prompt_room(vocab, context)
    if room is None:
        return WRITTEN_TOKENS
    return max(1, min(room, written_budget(context, len(_bos(vocab)) + room + 1)))
