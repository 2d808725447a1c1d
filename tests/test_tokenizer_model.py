"""VQTokenizer: the encode/decode contract, save/load round-trip, every quantizer, PIL helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_VQ

from tokenizer import VQTokenizer
from tokenizer.images import pil_to_tensor, square_resize, tensor_to_pil

TINY = {**TINY_VQ, "codebook_size": 64}


def tiny(**overrides) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(**{**TINY, **overrides})


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_encode_decode_shapes_dtypes_and_range():
    model = tiny().eval()
    codes = model.encode(images())
    assert model.grid_size == (16, 16) and model.image_size == 32 and model.codebook_size == 64
    assert codes.shape == (2, 16, 16) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    decoded = model.decode(codes.to(torch.int16))  # any integer dtype decodes
    assert decoded.shape == (2, 3, 32, 32) and decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_decode_agrees_with_the_training_pass():
    """decode(encode(x)) is the straight-through reconstruction of forward(x), clamped."""
    model = tiny().eval()
    x = images()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(model.decode(model.encode(x)), out.reconstruction.clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_bad_inputs_say_what_is_expected():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        model.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="float"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 16, 16), 64))
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.zeros(1, 8, 8, dtype=torch.long))


def test_save_and_load_round_trip_keeps_ema_codebook(tmp_path):
    model = tiny()
    model.train()
    for _ in range(3):  # k-means init and EMA updates change the codebook buffers
        model(images(4))
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VQTokenizer.from_pretrained(tmp_path).eval()
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(loaded.named_buffers())[name], buffer, msg=f"buffer {name} differs")
    assert bool(loaded.quantize._codebook.initted)
    x = images()
    assert torch.equal(loaded.encode(x), model.encode(x))
    torch.testing.assert_close(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


@pytest.mark.parametrize(
    ("settings", "codes_shape", "size"),
    [
        (dict(quantizer="vq"), (2, 16, 16), 64),
        (dict(quantizer="fsq", fsq_levels=(4, 4, 4)), (2, 16, 16), 64),
        (dict(quantizer="lfq", codebook_size=64), (2, 16, 16), 64),
        (dict(quantizer="residual", num_quantizers=2), (2, 16, 16, 2), 64),
    ],
)
def test_every_quantizer_trains_a_step_and_round_trips_codes(settings, codes_shape, size):
    model = tiny(**settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = images()
    out = model(x)
    loss = (out.reconstruction - x).abs().mean() + out.aux_loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.eval()
    codes = model.encode(x)
    assert codes.shape == codes_shape and model.codebook_size == size
    assert model.decode(codes).shape == x.shape


def test_unknown_quantizer_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="quantizer must be one of"):
        tiny(quantizer="gumbel")
    with pytest.raises(ValueError, match="encoder_type must be one of"):
        tiny(encoder_type="vit")
    with pytest.raises(ValueError, match="power-of-two"):
        tiny(quantizer="lfq", codebook_size=100)
    with pytest.raises(ValueError, match="divisible"):
        tiny(image_size=33)


def test_pil_helpers_resize_crop_and_map_to_minus_one_one():
    wide = Image.new("RGB", (300, 200), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 50, 200))  # a blue strip that the center crop removes
    gray = Image.new("L", (32, 32), 128)
    batch = pil_to_tensor([wide, gray], image_size=32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0, :, 16, 16], torch.tensor([1.0, -1.0, -1.0]))
    assert float(batch[0, 2].max()) < -0.99  # the blue strip was cropped away
    torch.testing.assert_close(batch[1], torch.full((3, 32, 32), 128 / 127.5 - 1))
    back = tensor_to_pil(batch)
    assert [im.size for im in back] == [(32, 32), (32, 32)] and back[0].mode == "RGB"
    assert back[1].getpixel((3, 3)) == (128, 128, 128)
    assert tensor_to_pil(torch.full((3, 4, 4), 5.0))[0].getpixel((0, 0)) == (255, 255, 255)  # clipped


def test_downscale_is_antialiased():
    """A 1-pixel checkerboard shrunk 4x must become flat gray, not an aliased pattern."""
    checker = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    small = np.asarray(square_resize(Image.fromarray(checker).convert("RGB"), 32)).astype(float)
    assert abs(small.mean() - 127.5) < 3 and small.std() < 10


def test_a_patch_encoder_code_depends_on_its_own_patch_only():
    """encoder_type="patch": a code is a function of its 2x2 patch (TINY's factor) and nothing else:
    the same patch gets the same code anywhere, and changing other pixels changes no other code."""
    model = tiny(encoder_type="patch", quantizer="fsq", fsq_levels=(4, 4, 4)).eval()
    x = images(1)
    codes = model.encode(x)
    changed = x.clone()
    changed[:, :, :8, :8] = -x[:, :, :8, :8]  # the top-left 4x4 codes' patches only
    after = model.encode(changed)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[:4, :4] = False
    assert torch.equal(after[0][outside], codes[0][outside])
    moved = x.clone()
    moved[:, :, 10:12, 20:22] = x[:, :, 0:2, 0:2]  # the top-left patch copied to cell (5, 10)
    assert model.encode(moved)[0, 5, 10] == codes[0, 0, 0]


def test_rounding_inputs_round_to_the_codes():
    model = tiny(encoder_type="patch", quantizer="fsq", fsq_levels=(5, 4, 3)).eval()
    x = images(2)
    with torch.no_grad():
        levels = model.rounding_inputs(model.encoder(x)).round()
    # FSQ's index of the rounded levels: mixed radix over (5, 4, 3), each level shifted to start at 0
    digits = levels + torch.tensor([2.0, 2.0, 1.0])
    index = digits[..., 0] + 5 * digits[..., 1] + 20 * digits[..., 2]
    assert torch.equal(index.long().view(2, 16, 16), model.encode(x))
    with pytest.raises(ValueError, match="fsq"):
        tiny(quantizer="vq").rounding_inputs(torch.zeros(1, TINY["latent_channels"], 16, 16))
