"""bf16 products from weights packed for oneDNN: the same numbers as ``F.linear``, only where they pay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generation import packed_linear
from unitok.precision import cpu_has_fast_bf16

# Packing is used only on CPUs with bf16 units (elsewhere oneDNN's bf16 kernels are emulated, and
# their bits need not match F.linear's own fallback), so that is where its numbers are checked.
needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or packed_linear._packing_ops() is None or not cpu_has_fast_bf16(),
    reason="packed bf16 products run only on a CPU with bf16 units and a PyTorch with oneDNN's packing ops")


@needs_onednn
@pytest.mark.parametrize(("outputs", "inputs", "bias"), [(96, 40, True), (96, 40, False), (512, 1536, False)])
def test_packed_products_equal_f_linear_bit_for_bit_for_any_row_count_and_shape(outputs, inputs, bias):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(outputs, inputs, generator=generator).bfloat16()
    offset = torch.randn(outputs, generator=generator).bfloat16() if bias else None
    packed = packed_linear.product(weight, offset, packed=True)
    x = torch.randn(33, inputs, generator=generator).bfloat16()
    for rows in (1, 2, 16, 33):  # a row's product never depends on the rows beside it
        assert torch.equal(packed(x[:rows]), F.linear(x[:rows], weight, offset))
        assert torch.equal(packed(x[:rows]), packed(x)[:rows])
    steps = x.view(33, 1, inputs)  # [rows, positions, features], as the decoder calls it
    assert torch.equal(packed(steps), F.linear(steps, weight, offset))


def test_packing_only_for_bf16_cpu_weights_on_a_cpu_with_bf16_units():
    weight = torch.zeros(8, 4)
    assert not packed_linear.wants_packing(weight, fast_bf16=True)  # fp32: MKL's own products
    assert not packed_linear.wants_packing(weight.bfloat16(), fast_bf16=False)  # emulated bf16 gains nothing
    if packed_linear._packing_ops() is not None and torch.backends.mkldnn.is_available():
        assert packed_linear.wants_packing(weight.bfloat16(), fast_bf16=True)


def test_unpacked_products_are_f_linear():
    weight, x = torch.randn(5, 3), torch.randn(2, 3)
    assert torch.equal(packed_linear.product(weight)(x), F.linear(x, weight))


def test_a_weight_onednn_cannot_pack_falls_back_to_f_linear(monkeypatch):
    def refuse(weight, rows):
        raise RuntimeError("no such layout")
    monkeypatch.setattr(packed_linear, "_packing_ops", lambda: (refuse, None))
    weight, x = torch.randn(5, 3).bfloat16(), torch.randn(2, 3).bfloat16()
    assert torch.equal(packed_linear.product(weight, packed=True)(x), F.linear(x, weight))
