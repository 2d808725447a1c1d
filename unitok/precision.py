"""Which floating-point precision is fast on this hardware.

bf16 pays only where the hardware computes in it: CUDA GPUs with bf16 (else fp16), and CPUs with
AMX or AVX-512 bf16 units. On any other CPU PyTorch emulates bf16 matrix products, which is far
slower than fp32 (docs/results.md), so a config that hard-codes ``bf16-mixed`` is a trap there.
Training runs whose config leaves ``trainer.precision`` out get the fastest precision from here.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matrix units


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU has bf16 matrix units (AMX or AVX-512 bf16)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def fast_dtype(device_type: str, flags: frozenset[str] | None = None) -> torch.dtype:
    """The fastest dtype that keeps enough range for an LM on ``device_type`` ("cpu", "cuda")."""
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16(flags) else torch.float32


def training_precision(accelerator: str | None, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """Lightning's ``precision`` for ``accelerator`` ("cpu", "gpu"/"cuda", "auto" or None: CUDA
    when available) and why, in one line for the log: mixed bf16 (or fp16) where the hardware
    computes in it, else full fp32."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    dtype = fast_dtype("cuda" if on_cuda else "cpu", flags)
    precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")
    if on_cuda:
        reason = f"a CUDA GPU {'with' if dtype == torch.bfloat16 else 'without'} bf16"
    elif dtype == torch.bfloat16:
        reason = "this CPU has bf16 matrix units"
    else:
        reason = "this CPU has no bf16 matrix units (AMX or AVX-512 bf16): bf16 would be emulated, slower than fp32"
    return precision, f"precision {precision}: {reason} (set trainer.precision to override)"
