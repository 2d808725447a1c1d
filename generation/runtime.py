"""Where a pipeline runs and in what precision: the device, the LM's dtype, the decoder's attention.

Usability first (diffusers' rule): the CPU runs in fp32 unless asked otherwise (``"auto"`` asks for
bf16 where the CPU has bf16 units, ``unitok.precision``); a CUDA GPU runs the LM in bf16, or fp16
where the GPU has no bf16. The image tokenizer stays in fp32 everywhere (its quantizer computes in
fp32).
"""

from __future__ import annotations

import logging

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import Attention
from diffusers.utils import is_xformers_available

from unitok.errors import UserError
from unitok.precision import fast_dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

logger = logging.getLogger(__name__)


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` checked to be usable here; None: CUDA when available, else the CPU."""
    if name is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:1, ...): {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def lm_dtype_for(device: torch.device, asked: torch.dtype | str | None = None) -> torch.dtype:
    """The LM's dtype on ``device``: ``asked`` (a dtype, its name, or "auto": the fastest the
    hardware computes in), or by default fp32 on a CPU and bf16 (fp16 without bf16) on CUDA."""
    if isinstance(asked, torch.dtype):
        return asked
    if asked == "auto" or (asked is None and device.type == "cuda"):
        return fast_dtype(device.type)
    if asked is None:
        return torch.float32
    if asked not in DTYPES:
        raise UserError(f"unknown dtype {asked!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[asked]


def enable_decoder_attention(pipeline: DiffusionPipeline, device: torch.device) -> str:
    """xformers for the image decoder's attention layers on CUDA when it is installed and usable,
    PyTorch SDPA otherwise; returns which."""
    if device.type == "cuda" and is_xformers_available():
        try:
            pipeline.enable_xformers_memory_efficient_attention()
            return "xformers"
        except (ModuleNotFoundError, ValueError) as error:
            logger.warning("xformers is installed but unusable (%s); using SDPA", error)
    return "sdpa"


def describe(device: torch.device, dtype: torch.dtype, lm: torch.nn.Module, decoder: torch.nn.Module,
             decoder_attention: str) -> str:
    """The one line that says how a pipeline runs."""
    layers = sum(isinstance(m, Attention) for m in decoder.modules())
    lm_attention = getattr(lm.config, "_attn_implementation", None) or "default"
    return (f"UniTok on {device} in {str(dtype).removeprefix('torch.')}: LM attention {lm_attention}, "
            f"image decoder attention {decoder_attention} ({layers} attention layers)")
