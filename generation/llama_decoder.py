"""A fast decoding path for plain ``LlamaForCausalLM`` LMs (the default model): the inference
forward restated as straight-line tensor code over the model's own weights, with a preallocated
KV cache, one sliced attention bias, a restricted head and, in bf16 on a CPU with bf16 units,
weights packed for oneDNN (``generation.packed_linear``; ``docs/sampling.md`` says why). Every
other model takes ``generation.decoder.CachedDecoder``; tests check both give the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from transformers import LlamaForCausalLM, PreTrainedModel

from generation import packed_linear
from generation.decoder import check_context
from unitok.lm.image_positions import DecodingSlots
from unitok.lm.sequences import Prompt
from unitok.vocabulary import UnifiedVocabulary

PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def supports(model: PreTrainedModel) -> bool:
    """True when ``LlamaDecoder`` reproduces this model's forward (checked by the tests)."""
    if type(model) is not LlamaForCausalLM:
        return False
    config = model.config
    return (
        config.hidden_act == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and not model.training
        and _weights_are_the_layers(model)
    )


def _weights_are_the_layers(model: LlamaForCausalLM) -> bool:
    """Whether the weights this path reads are all its layers compute: not where peft's LoRA layers
    stand in for projections, nor where a hook rewrites the head's logits (the new rows of a LoRA
    run in training, ``unitok.lm.lora``)."""
    head = model.lm_head
    if type(head) is not torch.nn.Linear or head._forward_hooks:
        return False
    return all(type(getattr(getattr(layer, block), name)) is torch.nn.Linear
               for layer in model.model.layers for block, names in PROJECTIONS.items() for name in names)


class LlamaDecoder:
    """Same interface as ``generation.decoder.CachedDecoder``: ``prefill()``, then ``step(ids)``."""

    def __init__(
        self, model: LlamaForCausalLM, vocab: UnifiedVocabulary, prompt: Prompt, id_range: range, max_new_tokens: int
    ):
        config = model.config
        device, dtype = model.device, model.dtype
        self.model = model
        self.layers = list(model.model.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        head = model.lm_head
        # Each weight's product, from weights packed for oneDNN where bf16 runs on bf16 units.
        packed = packed_linear.wants_packing(head.weight)
        self.products = [
            {name: packed_linear.product(module.weight, module.bias, packed)
             for block, names in PROJECTIONS.items() for name in names
             for module in [getattr(getattr(layer, block), name)]}
            for layer in self.layers]
        self.head = packed_linear.product(
            head.weight[id_range.start : id_range.stop],
            None if head.bias is None else head.bias[id_range.start : id_range.stop], packed)

        self.input_ids = prompt.input_ids.to(device)
        self.slots = DecodingSlots(model, vocab, self.input_ids)
        rows, prompt_length = self.input_ids.shape
        check_context(model, prompt, max_new_tokens)
        self.capacity = prompt_length + max_new_tokens
        shape = (rows, self.kv_heads, self.capacity, self.head_dim)
        # On a CPU attention runs in fp32 whatever the weights' dtype (the cache too): PyTorch's CPU
        # kernels attend from one query row over a bf16 cache 2-5x slower than over an fp32 one,
        # explicit products included (docs/results.md, "bf16 sampling").
        self.attention_dtype = torch.float32 if device.type == "cpu" else dtype
        self.keys = [torch.zeros(shape, dtype=self.attention_dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.attention_dtype, device=device) for _ in self.layers]
        # Additive attention bias over the cache columns (-inf on padding): measured faster than a
        # boolean mask in PyTorch's CPU attention kernel.
        self.bias = torch.zeros(rows, self.capacity, dtype=self.attention_dtype, device=device)
        self.bias[:, :prompt_length].masked_fill_(prompt.attention_mask.to(device) == 0, -torch.inf)
        self.prompt_position_ids = prompt.position_ids.to(device)
        self.next_position = self.prompt_position_ids[:, -1:] + 1
        self.length = 0
        # A row's positions count from its first real token, so none reaches the capacity.
        every_position = torch.arange(self.capacity, device=device).unsqueeze(0)
        # In the model's dtype, as transformers rotates.
        cos, sin = model.model.rotary_emb(self.bias.to(dtype), every_position)
        self.cos, self.sin = cos[0], sin[0]

    @torch.inference_mode()
    def prefill(self) -> torch.Tensor:
        """Run the prompt; logits of its last position. Identical rows are computed once."""
        length = self.input_ids.shape[1]
        masked_ids = self.input_ids.masked_fill(self.bias[:, :length] != 0, -1)
        distinct, row_of = torch.unique(masked_ids, dim=0, return_inverse=True)
        if len(distinct) == len(masked_ids):
            return self._prefill_rows(slice(None))
        first = torch.full((len(distinct),), len(row_of), device=row_of.device)
        first = first.scatter_reduce(0, row_of, torch.arange(len(row_of), device=row_of.device), "amin")
        logits = self._prefill_rows(first)
        for cache in (*self.keys, *self.values):
            cache[:, :, :length] = cache[first[row_of], :, :length]
        return logits[row_of]

    def _prefill_rows(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """Prefill ``rows`` of the batch, writing their cache rows in place."""
        length = self.input_ids.shape[1]
        device = self.bias.device
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = causal & (self.bias[rows, None, :length] == 0)
        # A padding position attends to itself, so no softmax row is empty (an empty row gives
        # NaN, and a NaN value poisons later rows even where its weight is zero).
        allowed |= torch.eye(length, dtype=torch.bool, device=device)
        bias = torch.zeros(allowed.shape, dtype=self.bias.dtype, device=device).masked_fill_(~allowed, -torch.inf)
        slots = None if self.slots.prompt is None else self.slots.prompt[rows]
        return self._forward(self.input_ids[rows], slots, self.prompt_position_ids[rows], bias.unsqueeze(1), rows)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.length >= self.capacity:
            raise RuntimeError(f"decoded more than the {self.capacity - self.input_ids.shape[1]} tokens planned")
        positions = self.next_position
        self.next_position = positions + 1
        mask = self.bias[:, None, None, : self.length + 1]
        return self._forward(ids.view(-1, 1), self.slots.append(ids), positions, mask, slice(None))

    def _forward(self, ids: torch.Tensor, slots: torch.Tensor | None, positions: torch.Tensor, mask: torch.Tensor,
                 rows: slice | torch.Tensor) -> torch.Tensor:
        """Run ``ids [n_rows, n]`` (image slots ``slots``) of batch ``rows`` at cache columns
        ``[length, length + n)``; logits of the last one. Only the prefill passes a subset of rows."""
        body = self.model.model
        start, n = self.length, ids.shape[1]
        stop = start + n
        x = self.slots.embed(ids, slots)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # broadcast over heads
        for i, (layer, product) in enumerate(zip(self.layers, self.products, strict=True)):
            h = self._norm(x, layer.input_layernorm.weight)
            q = rearrange(product["q_proj"](h), "b n (h d) -> b h n d", d=self.head_dim)
            k = rearrange(product["k_proj"](h), "b n (h d) -> b h n d", d=self.head_dim)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            v = rearrange(product["v_proj"](h), "b n (h d) -> b h n d", d=self.head_dim)
            q, k, v = q.to(self.attention_dtype), k.to(self.attention_dtype), v.to(self.attention_dtype)
            self.keys[i][rows, :, start:stop], self.values[i][rows, :, start:stop] = k, v
            if start:  # a step attends to the whole cache so far, the prefill to its own keys only
                k, v = self.keys[i][:, :, :stop], self.values[i][:, :, :stop]
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads,
            ).to(x.dtype)
            x = x + product["o_proj"](rearrange(attended, "b h n d -> b n (h d)"))
            h = self._norm(x, layer.post_attention_layernorm.weight)
            x = x + product["down_proj"](F.silu(product["gate_proj"](h)) * product["up_proj"](h))
        self.length = stop
        last = body.norm(x[:, -1])
        return self.head(last)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op; the same products as below
            return F.rms_norm(x, (x.shape[-1],), weight, eps=self.eps)
        # LlamaRMSNorm: normalise in fp32, scale in the model dtype.
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' ``apply_rotary_pos_emb`` (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
