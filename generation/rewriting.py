"""Prompt rewriting: the LM restates a prompt in its own captioning words before drawing it, and
says what it cannot draw; what the pipeline warns about a drawing follows from it.

The guard against a rewrite that adds, drops or changes what a prompt says: a restatement is drawn
from only when the LM chose every token of it with probability at least ``min_confidence`` (a
hallucinated object or background is a guess, and a guess is unsure) and it ends, within the
rewrite budget, in something that fits beside an image. Otherwise the prompt is drawn as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from generation.decoder import context_length
from generation.sampler import generate_rewrites
from generation.settings import REWRITE_CONFIDENCE
from unitok.lm.sequences import prompt_room, rewrite_budget
from unitok.lm.text_tokenizer import decode_text, encode_text
from unitok.vocabulary import UnifiedVocabulary


@dataclass(frozen=True)
class PromptRewrite:
    """How the LM restated a prompt: ``text`` is what is drawn (the prompt itself where the rewrite
    was not confident, empty or unfinished), ``unknown`` what it says it cannot draw,
    ``restatement`` the LM's own words whether used or not ("" when unfinished)."""

    text: str
    unknown: str
    accepted: bool
    restatement: str = ""


def restate(lm: PreTrainedModel, vocabulary: UnifiedVocabulary, text_tokenizer: PreTrainedTokenizerBase,
            prompts: Sequence[str], text_ids: Sequence[list[int]], batch_size: int = 16,
            min_confidence: float = REWRITE_CONFIDENCE) -> list[PromptRewrite]:
    """Each prompt (with its ``text_ids``) as the LM restates it, kept or refused by the guard."""
    budget = rewrite_budget(vocabulary, context_length(lm))
    room = prompt_room(vocabulary, context_length(lm))
    results = []
    for start in range(0, len(text_ids), batch_size):
        chunk = generate_rewrites(lm, vocabulary, list(text_ids[start : start + batch_size]), max_new_tokens=budget)
        for prompt, rewrite in zip(prompts[start : start + batch_size], chunk, strict=True):
            text = decode_text(text_tokenizer, rewrite.ids) if rewrite.finished else ""
            unknown = decode_text(text_tokenizer, rewrite.unknown) if rewrite.finished else ""
            accepted = bool(text) and rewrite.confidence >= min_confidence and (
                room is None or len(encode_text(text_tokenizer, text)) <= room)
            results.append(PromptRewrite(text if accepted else prompt, unknown, accepted, text))
    return results


def drawing_warnings(rewrite: PromptRewrite, consistency: Sequence[float], threshold: float,
                     unlikely: Sequence[str | None] | None = None) -> list[str]:
    """What to tell the user about a prompt's images: a part the model cannot draw, and images the
    model itself judges a poor match (consistency below ``threshold``: ``CONSISTENCY_WARNING`` of
    the judge that scored them), with, where the judge says (``unlikely``, per image), the word it
    least reads in the image ("" where it reads more in the image than the text says)."""
    notes = [f"the model cannot draw {rewrite.unknown!r}; it drew the rest of the prompt"] if rewrite.unknown else []
    for k, score in enumerate(consistency):
        if score >= threshold:
            continue
        word = None if unlikely is None else unlikely[k]
        why = "" if word is None else (f": it does not read {word!r} in it" if word
                                      else ": it shows more than the prompt says")
        notes.append(f"image {k} matches the prompt poorly{why} (consistency {score:.2f})")
    return notes


def word_at(text_tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], position: int) -> str:
    """The whole word of the text ``ids`` decode to that holds token ``position`` ("" for the
    position after the last token: the end of the text). Why a word: a token is often a piece of
    one ("cu", "be"), which says nothing to a user."""
    if position >= len(ids):
        return ""
    text = decode_text(text_tokenizer, ids)
    start = len(decode_text(text_tokenizer, ids[:position]))  # decoded text is stripped: skip the space
    while start < len(text) and text[start].isspace():
        start += 1
    stop = max(len(decode_text(text_tokenizer, ids[: position + 1])), start + 1)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while stop < len(text) and not text[stop].isspace():
        stop += 1
    return text[start:stop].strip(" ,.;:!?") or text[start:stop].strip()
