"""How a drawing call samples: the values a caller gives, the model's defaults for the rest, checked.

``check_sampling_values`` is the one validation of every sampling value, for the pipeline's
arguments and the command-line flags alike (``names`` says how to call a value in a message, so
the CLI names its flags). ``DrawSettings.resolve`` fills in a model's saved defaults
(``model_index.json``: ``default_guidance_scale``, ...). No torch here: the CLI checks its flags
before importing anything heavy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unitok.errors import UserError

if TYPE_CHECKING:
    from unitok.vocabulary import UnifiedVocabulary

DEFAULT_GUIDANCE_SCALE = 3.0  # a model's drawings are guided this much unless its config or the caller says
REWRITE_CONFIDENCE = 0.5  # a rewrite is drawn from only if the LM chose each of its tokens at least this sure
# Per judge, the consistency below which an image is flagged as a poor match of its prompt: the
# verdict's probability of yes; the caption's probability of the least likely word of the text
# drawn from (picked with scripts/check_consistency.py on scenes the eval does not use).
CONSISTENCY_WARNING = {"verdict": 0.5, "caption": 0.1}
# The pipeline arguments that have a saved model default, each as ``default_<name>`` in its config.
SAMPLING_VALUES = ("guidance_scale", "temperature", "top_k", "top_p", "num_candidates", "consensus_weight",
                   "rewrite_prompts", "judge")
# How reranking picks a candidate (``generation.rerank``): by the model's own yes/no verdict on the
# prompt (an LM trained to verify), or by the likelihood of the prompt as the candidate's caption.
JUDGES = ("verdict", "caption")


def check_sampling_values(names: Mapping[str, str] | None = None, **values: Any) -> None:
    """Raise ``UserError`` for a value no model can take (None: not given). ``names`` maps a value
    to what the caller calls it, e.g. ``{"guidance_scale": "--guidance"}``."""
    unknown = values.keys() - set(SAMPLING_VALUES)
    if unknown:
        raise TypeError(f"unknown sampling values {sorted(unknown)}")
    names = names or {}

    def refuse(name: str, rule: str) -> None:
        raise UserError(f"{names.get(name, name)} must be {rule}, got {values[name]!r}")

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    guidance = values.get("guidance_scale")
    if guidance is not None:
        scales = [guidance] if isinstance(guidance, int | float) else list(guidance)
        if not all(is_number(s) for s in scales):
            refuse("guidance_scale", "a finite number")
    temperature = values.get("temperature")
    if temperature is not None and not (is_number(temperature) and temperature >= 0):
        refuse("temperature", "a finite number >= 0")
    top_k = values.get("top_k")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0):
        refuse("top_k", "an integer >= 0")
    top_p = values.get("top_p")
    if top_p is not None and not (is_number(top_p) and 0.0 < top_p <= 1.0):
        refuse("top_p", "in (0, 1]")
    candidates = values.get("num_candidates")
    if candidates is not None and not (isinstance(candidates, int) and not isinstance(candidates, bool)
                                       and candidates >= 1):
        refuse("num_candidates", "an integer >= 1")
    weight = values.get("consensus_weight")
    if weight is not None and not (is_number(weight) and weight >= 0):
        refuse("consensus_weight", "a finite number >= 0")
    rewrite = values.get("rewrite_prompts")
    if rewrite is not None and not isinstance(rewrite, bool):
        refuse("rewrite_prompts", "True or False")
    judge = values.get("judge")
    if judge is not None and judge not in JUDGES:
        refuse("judge", f"one of {', '.join(JUDGES)}")


@dataclass(frozen=True)
class SamplingOptions:
    """How to turn logits into a token. ``temperature=0`` is greedy (argmax, no randomness)."""

    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens (None or 0: all)
    top_p: float | None = None  # keep the smallest set with probability >= top_p (None or 1: all)

    def __post_init__(self) -> None:
        check_sampling_values(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class DrawSettings:
    """How one drawing call samples (``UniTokPipeline.__call__``)."""

    options: SamplingOptions
    guidance_scale: float | tuple[float, ...]  # one for every prompt, or one per prompt
    num_candidates: int  # drawn per image, the best kept (``generation.rerank``)
    consensus_weight: float  # used only when reranking (num_candidates > 1)
    rewrite_prompts: bool
    judge: str  # one of JUDGES: how reranking picks a candidate

    @classmethod
    def resolve(cls, config: Any, vocabulary: UnifiedVocabulary, **given: Any) -> DrawSettings:
        """The values ``given`` (None: not given), the model's ``config.default_<name>`` for the
        rest; a ``UserError`` names what is wrong."""
        values = {name: getattr(config, f"default_{name}") if given.get(name) is None else given[name]
                  for name in SAMPLING_VALUES}
        unknown = given.keys() - set(SAMPLING_VALUES)
        if unknown:
            raise TypeError(f"unknown sampling values {sorted(unknown)}")
        check_sampling_values(**values)
        options = SamplingOptions(values["temperature"], values["top_k"], values["top_p"])
        if values["num_candidates"] > 1 and options.greedy:
            raise UserError(f"{values['num_candidates']} candidates per image need sampling (temperature > 0): "
                            "greedy decoding draws the same candidate every time")
        if values["rewrite_prompts"]:
            check_can_rewrite(vocabulary)
        judge = values["judge"] or model_judge(vocabulary)
        if judge == "verdict" and not vocabulary.has("verify"):
            raise UserError("this model cannot judge its drawings by a verdict: its vocabulary has no <|verify|> "
                            "token (an LM not trained to verify); use the caption judge")
        guidance = values["guidance_scale"]
        return cls(options, float(guidance) if isinstance(guidance, int | float) else tuple(map(float, guidance)),
                   values["num_candidates"], float(values["consensus_weight"]), values["rewrite_prompts"], judge)

    def scales_for(self, num_prompts: int) -> list[float]:
        """One guidance scale per prompt."""
        if isinstance(self.guidance_scale, float):
            return [self.guidance_scale] * num_prompts
        if len(self.guidance_scale) != num_prompts:
            raise UserError(f"got {len(self.guidance_scale)} guidance scales for {num_prompts} prompts")
        return list(self.guidance_scale)


@dataclass(frozen=True)
class EditSettings:
    """How one editing call samples (``UniTokPipeline.edit``): a model's ``default_edit_*``
    (greedy, one candidate, for a model saved without them) unless the caller says."""

    options: SamplingOptions
    num_candidates: int  # sampled per image, the best kept (``generation.rerank.rerank_edits``)
    consensus_weight: float  # used only when reranking

    @classmethod
    def resolve(cls, config: Any, temperature: float | None = None, num_candidates: int | None = None,
                consensus_weight: float | None = None) -> EditSettings:
        given = {"temperature": temperature, "num_candidates": num_candidates, "consensus_weight": consensus_weight}
        values = {name: getattr(config, f"default_edit_{name}") if value is None else value
                  for name, value in given.items()}
        if temperature == 0 and num_candidates is None:
            values["num_candidates"] = 1  # asked for the greedy edit: there is one
        check_sampling_values(**values)
        if values["num_candidates"] > 1 and values["temperature"] == 0:
            raise UserError(f"{values['num_candidates']} candidates per edit need sampling (temperature > 0): "
                            "greedy decoding edits the same way every time")
        return cls(SamplingOptions(values["temperature"]), values["num_candidates"], float(values["consensus_weight"]))


def model_judge(vocabulary: UnifiedVocabulary) -> str:
    """The judge of a model saved without one: its verdict where it was trained to verify."""
    return "verdict" if vocabulary.has("verify") else "caption"


def check_can_rewrite(vocabulary: UnifiedVocabulary) -> None:
    if not vocabulary.can_rewrite:
        raise UserError("this model cannot rewrite prompts: its vocabulary has no <|rewrite|> token "
                        "(an LM built before rewriting existed); draw without rewriting")

