"""The VQ image tokenizer, whole: images in [-1, 1] <-> a grid of discrete codes.

diffusers' VQGAN-style ``Decoder``, an encoder chosen by ``encoder_type`` (diffusers' ``Encoder``, or
``PatchEncoder``: each code a function of its own patch alone) and a vector-quantize-pytorch
quantizer chosen by ``quantizer``: ``vq`` (cosine, k-means init, dead-code replacement), ``fsq``,
``lfq`` or ``residual`` (codes ``[B, h, w, Q]``). A ``ModelMixin`` + ``ConfigMixin`` folder model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize

QUANTIZERS = ("vq", "fsq", "lfq", "residual")
ENCODERS = ("conv", "patch")


@dataclass
class QuantizerOutput:
    """What one pass through the quantizer gives the training loop."""

    quantized: torch.Tensor  # [B, C, h, w], straight-through gradients to the encoder
    codes: torch.Tensor  # [B, h, w] (or [B, h, w, Q] for residual), long
    aux_loss: torch.Tensor  # commitment / entropy loss, already weighted by the quantizer


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor  # [B, 3, H, W], not clamped (the loss sees the raw output)
    codes: torch.Tensor
    aux_loss: torch.Tensor
    latents: torch.Tensor  # [B, C, h, w], the encoder's output before quantization


class PatchEncoder(nn.Module):
    """Each latent from its own ``patch`` x ``patch`` pixels only: an MLP applied patch by patch
    (layer norms per patch, so nothing is shared across patches, unlike a GroupNorm).

    Goes beyond diffusers' ``Encoder``, whose receptive field spans the whole image, so that a
    code depends on what its patch shows and on nothing elsewhere: the same patch always gets the
    same code, an unchanged region keeps its codes when something else in the image changes, and
    a language model predicting codes from a description faces a function of the scene, not of
    how the encoder happened to use context.
    """

    def __init__(self, in_channels: int, out_channels: int, patch: int, width: int, depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"a patch encoder needs depth >= 1, got {depth}")
        self.patch = patch
        layers: list[nn.Module] = [nn.Linear(in_channels * patch * patch, width)]
        for _ in range(depth - 1):
            layers += [nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width)]
        layers += [nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_channels)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = rearrange(images, "b c (h p1) (w p2) -> b h w (c p1 p2)", p1=self.patch, p2=self.patch)
        return rearrange(self.mlp(patches), "b h w d -> b d h w")


class VQTokenizer(ModelMixin, ConfigMixin):
    """Encoder -> quantizer -> decoder. ``encode``/``decode`` are the two arrows other stages use.

    The defaults are the ``shapes64`` tokenizer of the embedded default model: 64x64 -> 8x8 codes
    (f8), narrow channels (it must train on a CPU), FSQ with levels (8, 8, 8) = 512 codes.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 16, 32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        latent_channels: int = 32,
        mid_block_add_attention: bool = False,
        encoder_type: str = "conv",
        patch_encoder_width: int = 512,
        patch_encoder_depth: int = 3,
        quantizer: str = "fsq",
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        threshold_ema_dead_code: float = 2.0,
        fsq_levels: tuple[int, ...] = (8, 8, 8),
        lfq_entropy_weight: float = 0.1,
        num_quantizers: int = 2,
        sync_codebook: bool | None = None,
    ):
        super().__init__()
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        if encoder_type not in ENCODERS:
            raise ValueError(f"encoder_type must be one of {ENCODERS}, got {encoder_type!r}")
        levels = len(block_out_channels)
        factor = 2 ** (levels - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {factor}")
        if encoder_type == "patch":
            self.encoder = PatchEncoder(in_channels, latent_channels, factor, patch_encoder_width, patch_encoder_depth)
        else:
            self.encoder = Encoder(
                in_channels=in_channels, out_channels=latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, double_z=False,
                mid_block_add_attention=mid_block_add_attention,
            )
        self.decoder = Decoder(
            in_channels=latent_channels, out_channels=in_channels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quantize = _build_quantizer(self.config)

    # ------------------------------------------------------------------------------------------
    # Facts other stages ask the tokenizer (the one place for them)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.config.image_size // 2 ** (len(self.config.block_out_channels) - 1)
        return side, side

    @property
    def codebook_size(self) -> int:
        if self.config.quantizer == "fsq":
            return int(torch.tensor(self.config.fsq_levels).prod())
        return self.config.codebook_size

    # ------------------------------------------------------------------------------------------
    # The two arrows

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> codes ``[B, h, w]`` (``[B, h, w, Q]`` for residual)."""
        self._check_images(images)
        return self.quantize_latents(self.encoder(images)).codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` (any integer dtype) -> images ``[B, 3, H, W]`` in [-1, 1]."""
        return self.decode_latents(self.codes_to_latents(codes)).clamp(-1.0, 1.0)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training pass: reconstruction with straight-through gradients, codes and quantizer loss."""
        self._check_images(images)
        latents = self.encoder(images)
        out = self.quantize_latents(latents)
        return TokenizerOutput(self.decode_latents(out.quantized), out.codes, out.aux_loss, latents)

    # ------------------------------------------------------------------------------------------
    # Pieces

    def quantize_latents(self, latents: torch.Tensor) -> QuantizerOutput:
        h, w = latents.shape[-2:]
        # Channel-last sequences: vector-quantize-pytorch's image-fmap mode (accept_image_fmap)
        # projects codes back onto the width axis when codebook_dim != dim.
        sequence = rearrange(latents, "b c h w -> b (h w) c").float()
        with torch.autocast(device_type=latents.device.type, enabled=False):  # codebooks stay fp32 under mixed precision
            return self._quantize_sequence(sequence, h, w)

    def _quantize_sequence(self, sequence: torch.Tensor, h: int, w: int) -> QuantizerOutput:
        kind = self.config.quantizer
        if kind == "fsq":
            quantized, indices = self.quantize(sequence)
            aux = sequence.new_zeros(())
        elif kind == "residual":
            quantized, indices, losses = self.quantize(sequence)
            aux = losses.sum()
        else:  # vq and lfq both return (quantized, indices, loss)
            quantized, indices, aux = self.quantize(sequence)
            aux = aux.sum()
        quantized = rearrange(quantized, "b (h w) c -> b c h w", h=h, w=w)
        if indices.ndim == 2:
            codes = rearrange(indices, "b (h w) -> b h w", h=h, w=w)
        else:
            codes = rearrange(indices, "b (h w) q -> b h w q", h=h, w=w)
        return QuantizerOutput(quantized, codes.long(), aux)

    def rounding_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """What FSQ rounds to pick codes, in units of its levels (``[B, h*w, d]``): two latents get
        the same code exactly where these round alike. vector-quantize-pytorch keeps this step
        inside ``FSQ.bound``; it is written out here (same formula) so a loss can pull one view's
        latents into the bins of another's."""
        if self.config.quantizer != "fsq":
            raise ValueError(f"rounding inputs exist for the fsq quantizer only, not {self.config.quantizer!r}")
        fsq = self.quantize
        projected = fsq.project_in(rearrange(latents, "b c h w -> b (h w) c").float())
        half_range = (fsq._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(fsq._levels % 2 == 0, 0.5, 0.0)
        return torch.tanh(projected + torch.atanh(offset / half_range)) * half_range - offset

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        expected = 4 if self.config.quantizer == "residual" else 3
        if codes.ndim != expected or tuple(codes.shape[1:3]) != self.grid_size:
            raise ValueError(
                f"codes must have shape [B, {self.grid_size[0]}, {self.grid_size[1]}"
                + (", Q]" if expected == 4 else "]") + f", got {tuple(codes.shape)}"
            )
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        h, w = self.grid_size
        flat = rearrange(codes.long(), "b h w ... -> b (h w) ...")
        if self.config.quantizer in ("fsq", "lfq"):
            vectors = self.quantize.indices_to_codes(flat)
        else:
            vectors = self.quantize.get_output_from_indices(flat)
        return rearrange(vectors, "b (h w) c -> b c h w", h=h, w=w)

    def enable_codebook_sync(self) -> None:
        """Rebuild the quantizer with cross-process codebook sync, keeping its state.

        vector-quantize-pytorch decides sync at construction, but Lightning builds the model before
        DDP starts the process group; without sync only rank 0's data would drive the EMA.
        The saved config keeps ``sync_codebook`` as it was, so a single-process
        ``from_pretrained`` never needs a process group.
        """
        if self.config.quantizer not in ("vq", "residual") or self.config.sync_codebook is False:
            return
        state = self.quantize.state_dict()
        self.quantize = _build_quantizer(self.config, sync_codebook=True).to(next(self.parameters()).device)
        self.quantize.load_state_dict(state)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != self.config.in_channels or tuple(images.shape[2:]) != (size, size):
            raise ValueError(
                f"images must be [B, {self.config.in_channels}, {size}, {size}] in [-1, 1], got {tuple(images.shape)}; "
                "tokenizer.images.pil_to_tensor resizes and converts PIL images"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")


def _build_quantizer(config, sync_codebook: bool | None = None) -> nn.Module:
    vq_settings = dict(
        codebook_size=config.codebook_size, codebook_dim=config.codebook_dim, use_cosine_sim=True,
        kmeans_init=config.kmeans_init, threshold_ema_dead_code=config.threshold_ema_dead_code,
        decay=config.ema_decay, commitment_weight=config.commitment_weight,
        sync_codebook=config.sync_codebook if sync_codebook is None else sync_codebook,
    )
    if config.quantizer == "vq":
        return VectorQuantize(dim=config.latent_channels, **vq_settings)
    if config.quantizer == "residual":
        return ResidualVQ(dim=config.latent_channels, num_quantizers=config.num_quantizers, **vq_settings)
    if config.quantizer == "fsq":
        return FSQ(levels=list(config.fsq_levels), dim=config.latent_channels)
    if config.codebook_size & (config.codebook_size - 1):
        raise ValueError(f"lfq needs a power-of-two codebook_size, got {config.codebook_size}")
    return LFQ(
        dim=config.latent_channels, codebook_size=config.codebook_size,
        entropy_loss_weight=config.lfq_entropy_weight, commitment_loss_weight=config.commitment_weight,
    )
