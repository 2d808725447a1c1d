"""Step-by-step decoding of a left-padded batch through any Hugging Face causal LM, with a KV cache:
guided and unguided rows in one forward pass, per-row positions, one mask buffer, the output head
restricted to the wanted id range. Why a loop of our own instead of ``generate``:
``docs/sampling.md``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from unitok.lm.image_positions import DecodingSlots
from unitok.lm.sequences import Prompt
from unitok.vocabulary import UnifiedVocabulary


def context_length(model: PreTrainedModel) -> int | None:
    """The number of positions the LM was built for (None when its config does not say)."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def check_context(model: PreTrainedModel, prompt: Prompt, max_new_tokens: int) -> None:
    """Refuse a run whose longest row would outgrow the positions the LM was built for."""
    limit = context_length(model)
    needed = int(prompt.attention_mask.sum(-1).max()) + max_new_tokens
    if limit is not None and needed > limit:
        raise ValueError(f"a prompt of {needed - max_new_tokens} tokens plus {max_new_tokens} new tokens "
                         f"exceeds the model's context of {limit} positions")


class CachedDecoder:
    """Decode ``prompt`` (left-padded rows) for up to ``max_new_tokens`` steps.

    ``prefill()`` runs the prompt and returns the logits of the next token, ``step(ids)`` appends
    one id per row and returns the following logits; both restricted to ``id_range`` and shaped
    ``[rows, len(id_range)]`` (so index ``j`` means id ``id_range.start + j``).
    """

    def __init__(
        self, model: PreTrainedModel, vocab: UnifiedVocabulary, prompt: Prompt, id_range: range, max_new_tokens: int
    ):
        if id_range.step != 1 or not len(id_range):
            raise ValueError(f"id_range must be a non-empty contiguous range, got {id_range}")
        self.model = model
        self.id_range = id_range
        device = model.device
        self.input_ids = prompt.input_ids.to(device)
        self.slots = DecodingSlots(model, vocab, self.input_ids)
        rows, prompt_length = self.input_ids.shape
        check_context(model, prompt, max_new_tokens)
        self.attention_mask = torch.ones(rows, prompt_length + max_new_tokens, dtype=torch.long, device=device)
        self.attention_mask[:, :prompt_length] = prompt.attention_mask.to(device)
        self.prompt_position_ids = prompt.position_ids.to(device)
        self.next_position = self.prompt_position_ids[:, -1:] + 1
        self.length = prompt_length
        self.capacity = prompt_length + max_new_tokens
        self.cache = None
        self.head_weight: torch.Tensor | None = None  # set by prefill when the restricted head is exact
        self.head_bias: torch.Tensor | None = None
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._body = model.get_decoder()

    def prefill(self) -> torch.Tensor:
        out = self.model(
            **self._inputs(self.input_ids, self.slots.prompt),
            attention_mask=self.attention_mask[:, : self.length],
            position_ids=self.prompt_position_ids,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        self.cache = out.get(self._cache_kwarg)
        last_hidden = out.hidden_states[-1][:, -1:]
        self._adopt_restricted_head(last_hidden, out.logits)
        return out.logits[:, -1, self.id_range.start : self.id_range.stop]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("call prefill() before step()")
        if self.length >= self.capacity:
            raise RuntimeError(f"decoded more than the {self.capacity - self.input_ids.shape[1]} tokens planned")
        self.length += 1
        inputs = {
            **self._inputs(ids.view(-1, 1), self.slots.append(ids)),
            "attention_mask": self.attention_mask[:, : self.length],
            "position_ids": self.next_position,
            "use_cache": True,
            self._cache_kwarg: self.cache,
        }
        self.next_position = self.next_position + 1
        if self.head_weight is None:
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
            return logits[:, self.id_range.start : self.id_range.stop]
        hidden = self._body(**inputs).last_hidden_state[:, -1]
        return F.linear(hidden, self.head_weight, self.head_bias)

    def _inputs(self, ids: torch.Tensor, slots: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.slots.active:
            return {"inputs_embeds": self.slots.embed(ids, slots)}
        return {"input_ids": ids}

    def _adopt_restricted_head(self, last_hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """Use the head's rows directly only if that reproduces the model's logits bit for bit.

        Models that scale or soft-cap their logits after the head (Gemma 2, Cohere...) fail the
        check and keep the full forward, which is always right, only slower; so does a head whose
        hooks rewrite its logits (a LoRA run's new rows, ``unitok.lm.lora``): the rows are compared
        without calling the head, which would run the hooks.
        """
        head = self.model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear) or self._body is self.model:
            return
        if not torch.equal(F.linear(last_hidden, head.weight, head.bias), logits):
            return
        self.head_weight = head.weight[self.id_range.start : self.id_range.stop]
        self.head_bias = None if head.bias is None else head.bias[self.id_range.start : self.id_range.stop]
