"""Image augmentations on tensors, for training batches only.

Each function takes a batch ``x`` of shape (n, 3, h, w), float, with values in [0, 1] (before
the processor's normalization), a strength, and a ``torch.Generator``; it returns a new tensor
of the same shape and dtype. At its off value (probability or strength 0; crop scale 1) each
returns ``x`` itself, untouched. Every draw is per example, from the generator, so a batch is
augmented the same way for the same seed and epoch.

Geometric transforms (rotation, random resized crop) resample with ``affine_grid`` and
``grid_sample`` (bilinear); pixels from outside the image are taken from its border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def hflip(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ``prob``."""
    if prob <= 0:
        return x
    flip = torch.rand(x.shape[0], generator=gen) < prob
    if not bool(flip.any()):
        return x
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image about its center by an angle drawn from [-degrees, degrees]."""
    if degrees <= 0:
        return x
    angle = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * math.radians(degrees)
    return rotate_by(x, angle)


def rotate_by(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate image i about its center by ``angle[i]`` radians (counter-clockwise as shown)."""
    n, _, h, w = x.shape
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates on both axes; a non-square image needs the
    # aspect ratio so that the rotation is a rotation in pixels.
    aspect = w / h
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin / aspect
    theta[:, 1, 0], theta[:, 1, 1] = sin * aspect, cos
    return _resample(x, theta)


def random_resized_crop(x: torch.Tensor, min_scale: float, gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random part of each image, of ``min_scale`` to all of its area and an aspect
    ratio in ``ratio`` (log-uniform), and resize it back to the full size (as in Inception's
    training, Szegedy et al. 2015)."""
    if min_scale >= 1:
        return x
    n = x.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, generator=gen))
    cw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width and height, as shares
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - cw)  # center, in [-1, 1] coordinates
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - ch)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    return _resample(x, theta)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Add noise drawn from N(0, std) to every value, then clip to [0, 1]."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) * std
    return (x + noise).clamp(0.0, 1.0)


def salt_and_pepper(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Set a share ``amount`` of the pixels (all channels of each) to black or white, half each."""
    if amount <= 0:
        return x
    n, _, h, w = x.shape
    hit = torch.rand(n, 1, h, w, generator=gen) < amount
    white = torch.rand(n, 1, h, w, generator=gen) < 0.5
    value = white.to(x.dtype).expand_as(x)
    return torch.where(hit.expand_as(x), value, x)


def _factors(n: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-example factors from [1 - strength, 1 + strength], shaped to broadcast."""
    return (1 + (torch.rand(n, generator=gen) * 2 - 1) * strength).view(n, 1, 1, 1)


_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 gen: torch.Generator) -> torch.Tensor:
    """Scale brightness, contrast (around each image's mean gray) and saturation (around each
    pixel's gray) by factors drawn from [1 - s, 1 + s], in that order; clip to [0, 1]."""
    if brightness <= 0 and contrast <= 0 and saturation <= 0:
        return x
    n = x.shape[0]
    out = x
    if brightness > 0:
        out = (out * _factors(n, brightness, gen)).clamp(0.0, 1.0)
    if contrast > 0:
        gray = (out * _GRAY.to(out.dtype)).sum(1, keepdim=True)
        mean = gray.mean(dim=(2, 3), keepdim=True)
        out = ((out - mean) * _factors(n, contrast, gen) + mean).clamp(0.0, 1.0)
    if saturation > 0:
        gray = (out * _GRAY.to(out.dtype)).sum(1, keepdim=True)
        out = ((out - gray) * _factors(n, saturation, gen) + gray).clamp(0.0, 1.0)
    return out


@dataclass(frozen=True)
class ImageAugment:
    """The augmentations a run applies to its training batches, in the order they run:
    crop, flip, rotation, color jitter, Gaussian noise, salt and pepper."""

    flip_prob: float = 0.0
    rotate_degrees: float = 0.0
    crop_scale: float = 1.0
    noise_std: float = 0.0
    salt_pepper: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @classmethod
    def from_config(cls, data_config: Any) -> "ImageAugment":
        """The augmentations of a ``DataConfig`` (fields of the same names)."""
        return cls(**{name: float(getattr(data_config, name)) for name in cls.__dataclass_fields__})

    @property
    def active(self) -> bool:
        return self != ImageAugment()

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(x, self.crop_scale, gen)
        x = hflip(x, self.flip_prob, gen)
        x = rotate(x, self.rotate_degrees, gen)
        x = color_jitter(x, self.brightness, self.contrast, self.saturation, gen)
        x = gaussian_noise(x, self.noise_std, gen)
        return salt_and_pepper(x, self.salt_pepper, gen)
