"""Training losses of the tokenizer: reconstruction, perceptual (opt-in) and PatchGAN hinge.

The quantizer's own loss (commitment, or LFQ's entropy term) comes out of the model; the
weights of everything are in the YAML config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

# torchvision's VGG16 ``features`` layout; "M" is a max-pool. Written out here because torchvision
# is not a dependency; the module indices match, so torchvision's vgg16 state dict loads as is.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS layers)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance: unit-normalised VGG16 features, squared difference, averaged per layer.

    This is LPIPS without its learned per-channel weights (the "baseline" variant of the LPIPS
    paper), so it needs only the backbone. Weights are never downloaded: pass a local file with
    torchvision's ``vgg16`` state dict (``features.N.weight`` keys; .safetensors or .pth).
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        self.features = vgg16_features()
        self.features.load_state_dict(_load_vgg_features(Path(weights_path)))
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # a frozen backbone, never in train mode
        return self

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _VGG16_TAPS:
                taps.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return taps

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pairs = zip(self._taps(reconstruction), self._taps(target), strict=True)
        return sum((a - b).pow(2).sum(dim=1).mean() for a, b in pairs)


def vgg16_features() -> nn.Sequential:
    """An untrained VGG16 ``features`` stack with torchvision's module indices."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


def _load_vgg_features(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual loss weights not found at {path}; pass a local torchvision vgg16 state dict "
            "(.safetensors or .pth) or set perceptual_weight: 0"
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{path} has no 'features.*' tensors: it is not a torchvision vgg16 state dict")
    return features


def build_perceptual_loss(weight: float, weights_path: str | None) -> PerceptualLoss | None:
    """The perceptual loss when asked for and its weights are local; otherwise None, said once in the log."""
    if weight <= 0:
        return None
    if not weights_path:
        log.warning(
            "perceptual loss is OFF: perceptual_weight=%s but no perceptual_weights_path was given "
            "(weights are never downloaded; pass a local torchvision vgg16 state dict to turn it on)", weight,
        )
        return None
    log.info("perceptual loss on: VGG16 features from %s, weight %s", weights_path, weight)
    return PerceptualLoss(weights_path)


class PatchDiscriminator(nn.Module):
    """The pix2pix / taming-transformers PatchGAN: one real/fake logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, num_layers + 1):
            previous, width = width, channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [nn.Conv2d(previous, width, 4, stride, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
