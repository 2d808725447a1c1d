"""Self-reranking: of several drawn candidates, keep the one whose prompt the model finds likeliest
as a caption of it.

Why: for a unified model, reading is easier than drawing (the embedded default captions 96.7 % of
held-out Shapes scenes exactly but draws 24 % of them), so the model's own captioning direction
is a good judge of its drawings. The score of a candidate is ``log p(prompt | image)``: the
captioning training sequence ``[bos] <boi> codes <eoi> prompt <eos>`` (``unitok.lm.sequences``)
in one teacher-forced pass, summed over the prompt and ``<eos>``. It is CLIP reranking (DALL-E)
without a second model. All candidates of an image share its prompt, so the sums compare as they
are, with no length normalisation.

Consensus. The captioner writes one phrasing only (for Shapes, the canonical caption), so a prompt
in other words ("a tiny square in the upper left corner") is scored partly on words it never
learned to read, and the score loses its edge: on 100 held-out Shapes scenes the default draws a
right candidate among 16 for 98 % of prompts either way, but picks one for 96 % of canonical
prompts and 75 % of paraphrased ones. The drawing direction reads paraphrases about as well as
canonical captions, so how many candidates the model itself reads as the same caption is a second
judge: the score becomes ``log p(prompt | image) + w * log(candidates with this image's reading)``.
``w = 1`` is the posterior mass of the reading (sampling frequency times likelihood); a larger
``w`` trusts the drawing's consensus more than the captioner's reading of an unfamiliar prompt.
A prompt that is word for word what the model writes for one of the image's candidates is in the
captioner's own language, where its likelihood is the sharper judge: such an image is reranked by
likelihood alone (on those selection scenes: 96 % of canonical prompts picked right, 92 % with
the consensus term; paraphrases are never anyone's reading and keep it, 81 %).

Rewriting. A model trained with the rewriting task (``unitok.lm.sequences``) restates each prompt
in the captioner's own words before drawing (``UniTokPipeline.rewrite_prompt``), so the prompt that
reaches this judge is nearly always one it reads well: the default then picks right for 91.7 % of
paraphrased prompts on the 300 report scenes, against 76.7 % for the same LM without rewriting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from unitok.lm.image_positions import lm_forward
from unitok.lm.sequences import captioning_example, collate, next_token_losses
from unitok.vocabulary import UnifiedVocabulary


@torch.inference_mode()
def prompt_log_likelihood(
    model: PreTrainedModel,
    vocab: UnifiedVocabulary,
    codes: torch.Tensor,
    text_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> torch.Tensor:
    """``[N]`` log-probabilities of each ``text_ids[i]`` (then EOS) as the caption of ``codes[i]``."""
    if len(text_ids) != codes.shape[0]:
        raise ValueError(f"got {len(text_ids)} prompts for {codes.shape[0]} code grids")
    scores = []
    for start in range(0, codes.shape[0], batch_size):
        examples = [captioning_example(grid, ids, vocab)
                    for grid, ids in zip(codes[start : start + batch_size].cpu(), text_ids[start : start + batch_size], strict=True)]
        batch = {k: v.to(model.device) for k, v in collate(examples, vocab).items()}
        logits = lm_forward(model, vocab, batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, _ = next_token_losses(logits, batch["labels"])  # 0 outside the prompt and <eos>
        scores.append(-losses.sum(-1))
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
