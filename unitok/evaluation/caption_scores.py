"""How close candidate captions come to reference captions: BLEU-4, ROUGE-L and CIDEr-D, the
figures COCO-style captioning reports, with nothing to download and no Java.

Every metric compares the same words (``cider.caption_words``: lower-cased, punctuation dropped).
BLEU-4 is torchmetrics' corpus BLEU (n-grams 1-4, uniform weights, no smoothing, the closest
reference length for the brevity penalty), as pycocoevalcap's; ROUGE-L is torchmetrics' F1 of
the longest common subsequence against the best-matching reference, averaged over captions
(pycocoevalcap weighs recall more, F with beta 1.2, so its figures differ a little); CIDEr-D is
``unitok.evaluation.cider``. BLEU and ROUGE lie in [0, 1], CIDEr-D in [0, 10]; papers print all
three times 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torchmetrics.functional.text import bleu_score, rouge_score

from unitok.evaluation.cider import caption_words, cider_d


@dataclass(frozen=True)
class CaptionScores:
    n: int  # captions scored
    bleu4: float
    rouge_l: float
    cider_d: float
    exact: float  # share of captions whose words equal those of one of their references

    def as_dict(self) -> dict:
        return asdict(self)


def score_captions(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> CaptionScores:
    """One candidate per item against that item's reference captions (at least one each)."""
    if not candidates or len(candidates) != len(references):
        raise ValueError(f"need one reference set per candidate, got {len(candidates)} candidates and "
                         f"{len(references)} reference sets")
    preds = [" ".join(caption_words(text)) for text in candidates]
    targets = [[" ".join(caption_words(text)) for text in refs] for refs in references]
    rouge = rouge_score(preds, targets, rouge_keys="rougeL", accumulate="best", normalizer=lambda text: text,
                        tokenizer=str.split)
    return CaptionScores(
        n=len(preds),
        bleu4=float(bleu_score(preds, targets, n_gram=4)),
        rouge_l=float(rouge["rougeL_fmeasure"]),
        cider_d=cider_d(candidates, references)[0],
        exact=sum(pred in refs for pred, refs in zip(preds, targets, strict=True)) / len(preds),
    )
