"""LoRA fine-tuning of a pretrained base: peft adapters plus UniTok's own embedding rows, nothing else.

With ``model.lora`` set, every weight of the base LLM stays frozen. What trains:

- low-rank adapters (``peft``'s LoRA) on the linear layers that ``LoraSettings.target_modules``
  names ("all-linear": every linear layer but the output head);
- the rows the vocabulary extension added, from ``vocab.text_size`` on (UniTok's special tokens and
  the image codes), of the input embedding and, when the head is not tied to it, of the output
  head (``NewRows``);
- the grid-cell table when the LM has one (``unitok.lm.image_positions``: UniTok's, never the base's).

A trained model leaves as a plain HF model with the adapters merged (``merge_lora``), or as a
small adapter folder in peft's format beside its new rows (``save_adapter`` / ``apply_adapter``);
``unitok.lm.model.load_unified_lm`` loads either. peft is the optional ``[lora]`` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from unitok.errors import UserError
from unitok.lm.image_positions import image_position_table
from unitok.vocabulary import UnifiedVocabulary

try:
    import peft
except ImportError:  # the optional [lora] extra
    peft = None

ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's name: a folder with it is an adapter folder
NEW_ROWS_FILE = "unitok_new_rows.safetensors"
NEW_ROWS_ATTRIBUTE = "unitok_new_rows"


@dataclass
class LoraSettings:
    """LoRA on a pretrained base (``model.lora``): rank ``r``, scale ``alpha / r``, dropout on the
    adapters' input, and the layers that get adapters (peft's ``target_modules``: module names or
    name suffixes such as ``[q_proj, v_proj]``, a regex, or ``"all-linear"``)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def peft_config(self) -> peft.LoraConfig:
        require_peft()
        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=self.target_modules, bias="none")


def require_peft() -> None:
    if peft is None:
        raise UserError("model.lora needs peft: pip install 'unitok-lm[lora]'")


class NewRows(torch.nn.Module):
    """Trainable copies of the embedding rows from ``text_size`` on (and of an untied head's).

    The rows sit beside the frozen matrices and take their place through forward hooks: the
    input embedding's output at new ids is replaced by ``input``'s rows, the head's logits from
    ``text_size`` on are computed from ``output`` (from ``input`` when the head is tied to the
    embedding, as Qwen2's is, so the new rows stay tied too).

    Why not a gradient mask on the whole matrix: the optimiser would still hold the whole matrix
    (AdamW's two moments of a 151k x 896 embedding are ~1 GB in fp32 for Qwen2.5-0.5B) and its
    weight decay would move the masked rows anyway; here the base matrices have no gradient and
    are not in the optimiser, so they stay bit-for-bit as loaded, by construction. ``merge`` writes
    the rows back into the matrices and removes the hooks: a plain HF model again.
    """

    def __init__(self, model: PreTrainedModel, text_size: int):
        super().__init__()
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        self.text_size = text_size
        self.tied = head is not None and head.weight is embedding.weight
        self.input = torch.nn.Parameter(embedding.weight[text_size:].detach().clone())
        untied_head = head is not None and not self.tied
        self.output = torch.nn.Parameter(head.weight[text_size:].detach().clone()) if untied_head else None
        self._hooks = [embedding.register_forward_hook(self._embed)]
        if head is not None:
            self._hooks.append(head.register_forward_hook(self._logits))

    def _embed(self, module: torch.nn.Embedding, args: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        rows = F.embedding((ids - self.text_size).clamp(min=0), self.input)
        return torch.where((ids >= self.text_size).unsqueeze(-1), rows.to(output.dtype), output)

    def _logits(self, module: torch.nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        hidden = args[0]
        weight = self.input if self.output is None else self.output
        bias = None if module.bias is None else module.bias[self.text_size:]
        # In place: the logits are the biggest activation; linear's backward does not need them.
        output[..., self.text_size:] = F.linear(hidden, weight.to(hidden.dtype), bias).to(output.dtype)
        return output

    def state(self) -> dict[str, torch.Tensor]:
        rows = {"input": self.input.detach().cpu().contiguous()}
        if self.output is not None:
            rows["output"] = self.output.detach().cpu().contiguous()
        return rows

    def merge(self, model: PreTrainedModel) -> None:
        """Write the rows into the model's matrices, drop the hooks and this module."""
        for handle in self._hooks:
            handle.remove()
        write_rows(model, self.state(), self.text_size)
        delattr(model, NEW_ROWS_ATTRIBUTE)


def write_rows(model: PreTrainedModel, rows: dict[str, torch.Tensor], text_size: int) -> None:
    """Put ``rows`` (``NewRows.state``) into the input embedding (and an untied head) from ``text_size`` on."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    expected = embedding.num_embeddings - text_size
    if rows["input"].shape[0] != expected or (("output" in rows) != (head is not None and head.weight is not embedding.weight)):
        raise UserError(f"the saved new rows ({tuple(rows['input'].shape)}, head rows: {'output' in rows}) do not fit "
                        f"this LM ({expected} new rows, tied head: {head is not None and head.weight is embedding.weight})")
    with torch.no_grad():
        embedding.weight[text_size:] = rows["input"].to(embedding.weight.dtype)
        if "output" in rows:
            head.weight[text_size:] = rows["output"].to(head.weight.dtype)


def new_rows(model: PreTrainedModel) -> NewRows | None:
    return getattr(model, NEW_ROWS_ATTRIBUTE, None)


# -- training ------------------------------------------------------------------------------------


def apply_lora(model: PreTrainedModel, vocab: UnifiedVocabulary, settings: LoraSettings) -> None:
    """Freeze ``model`` and make only adapters, new rows and the grid-cell table trainable (in place:
    ``model`` stays the same HF model, so every UniTok forward pass works on it unchanged)."""
    inject_adapters(model, settings)
    model.add_module(NEW_ROWS_ATTRIBUTE, NewRows(model, vocab.text_size))
    table = image_position_table(model)
    if table is not None:
        table.requires_grad_(True)


def inject_adapters(model: PreTrainedModel, settings: LoraSettings) -> None:
    """peft's LoRA layers in place of the targeted ones; every other parameter frozen."""
    config = settings.peft_config()
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as error:
        raise UserError(f"model.lora.target_modules {settings.target_modules!r} match no layer of this LM "
                        f"({error}); its linear layers are named {sorted(linear_layer_names(model))}") from error
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if isinstance(module, peft.tuners.lora.LoraLayer):
            raise UserError("model.lora.target_modules names the embedding or the output head: leave them out "
                            "(their new rows train directly, their base rows stay frozen)")


def linear_layer_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def trainable_summary(model: PreTrainedModel) -> str:
    """One log line: trainable parameters, their share of the model and what they are. The model
    counts every parameter once (the new rows stand in for rows the base matrices hold already)."""
    rows, table = new_rows(model), image_position_table(model)
    copies = 0 if rows is None else sum(p.numel() for p in rows.parameters())
    total = sum(p.numel() for p in model.parameters()) - copies
    parts = {"adapters": 0, "new embedding rows": 0, "grid-cell table": 0}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if rows is not None and any(parameter is p for p in rows.parameters()):
            parts["new embedding rows"] += parameter.numel()
        elif table is not None and parameter is table.weight:
            parts["grid-cell table"] += parameter.numel()
        else:
            parts["adapters"] += parameter.numel()
    trainable = sum(parts.values())
    detail = ", ".join(f"{name} {count:,}" for name, count in parts.items() if count)
    return f"LoRA: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f} %): {detail}"


# -- export and loading ----------------------------------------------------------------------------


def wrap_for_export(model: PreTrainedModel, vocab: UnifiedVocabulary, settings: LoraSettings) -> peft.PeftModel:
    """A fresh ``model`` with the adapters and new rows of training, under the same parameter names
    (``peft_model.base_model.model`` is the HF model a checkpoint's weights load into)."""
    require_peft()
    peft_model = peft.get_peft_model(model, settings.peft_config())
    model.add_module(NEW_ROWS_ATTRIBUTE, NewRows(model, vocab.text_size))
    return peft_model


def merge_lora(peft_model: peft.PeftModel) -> PreTrainedModel:
    """The plain HF model: adapters merged into the weights, new rows written into the matrices."""
    model = peft_model.base_model.model
    new_rows(model).merge(model)
    return peft_model.merge_and_unload()


def save_adapter(peft_model: peft.PeftModel, base: str, directory: str | os.PathLike) -> None:
    """peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (whose base is ``base``), and
    ``unitok_new_rows.safetensors``. The caller adds the tokenizer and vocabulary files."""
    model = peft_model.base_model.model
    peft_model.peft_config["default"].base_model_name_or_path = base
    # "auto" would save the whole resized embedding (and may ask the hub for the base's config).
    peft_model.save_pretrained(directory, save_embedding_layers=False)
    save_file(new_rows(model).state(), str(Path(directory) / NEW_ROWS_FILE))


def adapter_base(directory: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (``base_model_name_or_path``)."""
    require_peft()
    base = peft.PeftConfig.from_pretrained(str(directory)).base_model_name_or_path
    if not base:
        raise UserError(f"{directory}/{ADAPTER_CONFIG_FILE} names no base model (base_model_name_or_path)")
    return base


def apply_adapter(base: PreTrainedModel, vocab: UnifiedVocabulary, directory: str | os.PathLike) -> PreTrainedModel:
    """``base`` (the base LLM as loaded) extended to ``vocab`` with the folder's new rows and its
    adapters merged: the same weights as a merged export of the same checkpoint."""
    base.resize_token_embeddings(vocab.size, mean_resizing=False)
    write_rows(base, load_file(str(Path(directory) / NEW_ROWS_FILE)), vocab.text_size)
    return peft.PeftModel.from_pretrained(base, str(directory)).merge_and_unload()
