"""Where a pipeline runs and in what precision: the device, the LM's dtype, the decoder's attention.

Unless asked otherwise the LM runs in the fastest precision the hardware computes in
(``unitok.precision``): bf16 on a CPU with bf16 units (AMX, AVX-512 bf16), where bf16 sampling is
~2x fp32 and draws and captions as well (docs/results.md, "bf16 sampling"), fp32 on any other CPU
(bf16 would be emulated, many times slower), bf16 on a CUDA GPU, fp16 on one without bf16. The
image tokenizer stays in fp32 everywhere (its quantizer computes in fp32).
"""

from __future__ import annotations

import logging

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import Attention
from diffusers.utils import is_xformers_available

from unitok.errors import UserError
from unitok.precision import cpu_has_fast_bf16, fast_dtype

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
    """The LM's dtype on ``device``: ``asked`` (a dtype or its name), or by default ("auto" or
    None) the fastest the hardware computes in."""
    if isinstance(asked, torch.dtype):
        return asked
    if asked in ("auto", None):
        return fast_dtype(device.type)
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


def dtype_reason(device: torch.device, asked: torch.dtype | str | None) -> str:
    """Why the LM runs in the dtype ``lm_dtype_for(device, asked)`` gives, for the log line."""
    if asked not in (None, "auto"):
        return "as asked"
    if device.type == "cuda":
        return "the fastest this GPU computes in"
    return ("this CPU has bf16 units" if cpu_has_fast_bf16() else
            "this CPU has no bf16 units") + "; dtype float32 or bfloat16 to choose"


def describe(device: torch.device, dtype: torch.dtype, lm: torch.nn.Module, decoder: torch.nn.Module,
             decoder_attention: str, reason: str = "") -> str:
    """The one line that says how a pipeline runs (``reason``: why in that dtype)."""
    layers = sum(isinstance(m, Attention) for m in decoder.modules())
    lm_attention = getattr(lm.config, "_attn_implementation", None) or "default"
    because = f" ({reason})" if reason else ""
    return (f"UniTok on {device} in {str(dtype).removeprefix('torch.')}{because}: LM attention {lm_attention}, "
            f"image decoder attention {decoder_attention} ({layers} attention layers)")
