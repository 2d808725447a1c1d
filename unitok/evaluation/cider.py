"""CIDEr-D: consensus-based caption scoring (Vedantam, Zitnick and Parikh, CVPR 2015,
arXiv:1411.5726), as the COCO caption evaluation code computes it (``pycocoevalcap/cider``).

Follows the reference exactly:
- n-grams of 1 to 4 words; each caption is a tf-idf vector per n-gram length, tf the count in
  the caption, idf ``log(N) - log(max(1, df))`` with ``N`` the number of images and ``df`` the
  number of images among whose references the n-gram occurs (the references of the corpus being
  scored, so an n-gram no reference has gets the full ``log(N)``);
- per n and per reference, the candidate's weights are clipped to the reference's
  (``min(candidate, reference) * reference``) before dividing by both norms (0 where a norm is 0);
- a Gaussian length penalty ``exp(-delta² / (2 · 6²))``, delta counted in bigrams as the
  reference code counts it (a caption of ``w`` words has ``max(w - 1, 0)``);
- the mean over n = 1..4, then over the references, times 10; the corpus score is the mean over
  images. So a candidate equal to its only reference, with every n-gram length present, scores
  10, and one sharing no n-gram with the references scores 0.

Goes beyond it (or apart from it):
- Tokenization is ``caption_words`` (lower-cased word characters, punctuation dropped) instead of
  the Stanford PTB tokenizer the reference runs in Java; they differ on contractions ("don't")
  and hyphenated words, which are rare in captions.
- The score of one image alone is 0 by construction (every idf is ``log 1 = 0``); the reference
  gives the same 0. Score at least two images, and many for a stable figure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

MAX_N = 4
SIGMA = 6.0
_WORD = re.compile(r"\w+")


def caption_words(text: str) -> list[str]:
    """A caption as the words every caption metric here compares: lower-cased, punctuation dropped."""
    return _WORD.findall(text.lower())


def ngram_counts(words: Sequence[str], max_n: int = MAX_N) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of 1 to ``max_n`` words."""
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


@dataclass
class _Vector:
    """One caption's tf-idf weights, split by n-gram length, with their norms and its length."""

    weights: list[dict[tuple[str, ...], float]]
    norms: list[float]
    length: int  # in bigrams, as the reference code counts it


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = SIGMA) -> tuple[float, list[float]]:
    """CIDEr-D of one candidate caption per image against that image's references.

    Returns the corpus score (the mean over images) and the per-image scores, each in [0, 10].
    """
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates for {len(references)} reference sets")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    candidate_counts = [ngram_counts(caption_words(text)) for text in candidates]
    reference_counts = [[ngram_counts(caption_words(text)) for text in refs] for refs in references]
    document_frequency = Counter(ngram for refs in reference_counts for ngram in set().union(*refs))
    log_images = math.log(len(candidates)) if candidates else 0.0

    def vector(counts: Counter[tuple[str, ...]]) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(MAX_N)]
        for ngram, tf in counts.items():
            weights[len(ngram) - 1][ngram] = tf * (log_images - math.log(max(1, document_frequency[ngram])))
        norms = [math.sqrt(sum(w * w for w in by_n.values())) for by_n in weights]
        return _Vector(weights, norms, sum(tf for ngram, tf in counts.items() if len(ngram) == 2))

    def similarity(candidate: _Vector, reference: _Vector) -> float:
        """Mean over n of the clipped cosine, times the length penalty."""
        penalty = math.exp(-((candidate.length - reference.length) ** 2) / (2 * sigma**2))
        total = 0.0
        for n in range(MAX_N):
            if candidate.norms[n] and reference.norms[n]:
                ref = reference.weights[n]
                dot = sum(min(w, ref.get(g, 0.0)) * ref.get(g, 0.0) for g, w in candidate.weights[n].items())
                total += dot / (candidate.norms[n] * reference.norms[n])
        return penalty * total / MAX_N

    scores = []
    for counts, refs in zip(candidate_counts, reference_counts, strict=True):
        candidate = vector(counts)
        scores.append(10.0 * sum(similarity(candidate, vector(ref)) for ref in refs) / len(refs))
    return (sum(scores) / len(scores) if scores else 0.0), scores
