"""bf16 matrix products on a CPU with bf16 units, from weights packed once into oneDNN's layout.

At decoding shapes (a few rows against each weight) ``F.linear`` in bf16 repacks the weight on
every call and runs only 1.5-3x faster than fp32; products from weights packed beforehand run
2.4-4.2x faster than fp32, bit for bit the same as ``F.linear`` in bf16 (docs/results.md, "bf16
sampling"). PyTorch does this packing itself only inside ``torch.compile`` (Inductor's weight
prepacking with freezing), which costs tens of seconds per model and shape; here the packing is
done directly, with the same oneDNN ops, once per decoding call. Where those ops are missing (a
PyTorch built without oneDNN, or a version that renamed them) products fall back to ``F.linear``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unitok.precision import cpu_has_fast_bf16

logger = logging.getLogger(__name__)

Product = Callable[[torch.Tensor], torch.Tensor]
EXPECTED_ROWS = 16  # the batch oneDNN tunes a packed layout for; any row count computes the same


def _packing_ops() -> tuple[Callable, Callable] | None:
    """oneDNN's (pack, product) ops where this PyTorch has them."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def wants_packing(weight: torch.Tensor, fast_bf16: bool | None = None) -> bool:
    """True for bf16 weights on a CPU that has bf16 units (``fast_bf16``: the CPU check's answer,
    asked when None) and a PyTorch with oneDNN's packing ops."""
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return (cpu_has_fast_bf16() if fast_bf16 is None else fast_bf16) and _packing_ops() is not None


def product(weight: torch.Tensor, bias: torch.Tensor | None = None, packed: bool = False) -> Product:
    """``x -> F.linear(x, weight, bias)``, from a packed copy of ``weight`` when ``packed``
    (see ``wants_packing``); the unpacked product where packing fails."""
    if packed:
        pack, linear = _packing_ops()
        try:
            weights = pack(weight.detach(), EXPECTED_ROWS)
        except RuntimeError as error:  # a oneDNN that cannot pack this shape or dtype
            logger.debug("oneDNN could not pack a %s weight (%s); using F.linear", tuple(weight.shape), error)
        else:
            return lambda x: linear(x, weights, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)
