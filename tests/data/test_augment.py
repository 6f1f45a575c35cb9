"""Image augmentations on tensors: shape, dtype, identity when off, and what each must do."""

import math

import pytest
import torch

from pretune.data.augment import (
    ImageAugment,
    color_jitter,
    gaussian_noise,
    hflip,
    random_resized_crop,
    rotate,
    rotate_by,
    salt_and_pepper,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=4, h=16, w=16, seed=0):
    return torch.rand(n, 3, h, w, generator=gen(seed))


OPS = {
    "flip": lambda x, g, s: hflip(x, s, g),
    "rotate": lambda x, g, s: rotate(x, s * 30, g),
    "crop": lambda x, g, s: random_resized_crop(x, 1 - 0.6 * s, g),
    "noise": lambda x, g, s: gaussian_noise(x, 0.1 * s, g),
    "salt_pepper": lambda x, g, s: salt_and_pepper(x, 0.1 * s, g),
    "jitter": lambda x, g, s: color_jitter(x, 0.4 * s, 0.4 * s, 0.4 * s, g),
}


@pytest.mark.parametrize("name", OPS)
def test_shape_dtype_and_range_kept(name):
    x = batch(h=12, w=20)
    y = OPS[name](x, gen(), 1.0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= -1e-6 and float(y.max()) <= 1 + 1e-6
    assert not torch.equal(y, x), f"{name} at full strength changed nothing"


@pytest.mark.parametrize("name", OPS)
def test_identity_at_the_off_value(name):
    x = batch()
    assert OPS[name](x, gen(), 0.0) is x


@pytest.mark.parametrize("name", OPS)
def test_same_generator_seed_same_result(name):
    x = batch()
    assert torch.equal(OPS[name](x, gen(3), 1.0), OPS[name](x, gen(3), 1.0))


def test_flip_always_mirrors_and_twice_is_identity():
    x = batch()
    once = hflip(x, 1.0, gen())
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(hflip(once, 1.0, gen()), x)


def test_flip_probability_flips_about_that_share():
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(2000, 3, 2, 8).contiguous() / 8
    y = hflip(x, 0.3, gen())
    flipped = (y[:, 0, 0, 0] != x[:, 0, 0, 0]).float().mean()
    assert abs(float(flipped) - 0.3) < 0.04


def test_rotation_by_a_quarter_turn_is_rot90_and_a_full_turn_is_identity():
    x = batch(n=2, h=9, w=9)
    quarter = rotate_by(x, torch.full((2,), math.pi / 2))
    assert torch.allclose(quarter, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate_by(x, torch.full((2,), 2 * math.pi)), x, atol=1e-5)


def test_small_rotation_keeps_the_centre_pixel():
    x = batch(n=3, h=11, w=11)
    y = rotate(x, 20.0, gen())
    assert torch.allclose(y[:, :, 5, 5], x[:, :, 5, 5], atol=1e-5)


def test_crop_of_a_constant_image_is_that_constant_and_crops_zoom_in():
    flat = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(random_resized_crop(flat, 0.3, gen()), flat)
    # A vertical gradient cropped to a part spans a smaller range of values.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(8, 3, 32, 32).contiguous()
    y = random_resized_crop(ramp, 0.2, gen())
    spans = y[:, 0, -1, 0] - y[:, 0, 0, 0]
    assert bool((spans < 1.0).all()) and bool((spans > 0).all())


def test_gaussian_noise_has_the_asked_standard_deviation():
    x = torch.full((8, 3, 32, 32), 0.5)  # far from the clipping bounds
    y = gaussian_noise(x, 0.05, gen())
    diff = y - x
    assert abs(float(diff.std()) - 0.05) < 0.003
    assert abs(float(diff.mean())) < 0.003


def test_salt_and_pepper_sets_the_asked_share_of_pixels_to_black_or_white():
    x = torch.full((16, 3, 32, 32), 0.5)
    y = salt_and_pepper(x, 0.1, gen())
    hit = (y != 0.5).any(dim=1)
    assert abs(float(hit.float().mean()) - 0.1) < 0.01
    values = set(torch.unique(y[y != 0.5]).tolist())
    assert values == {0.0, 1.0}
    # all channels of a hit pixel together: a pixel is black or white, not colored
    assert torch.equal((y == 0).all(1) | (y == 1).all(1), hit)


def test_brightness_scales_and_saturation_zero_would_be_gray():
    x = batch(n=64) * 0.5  # room to brighten without clipping
    y = color_jitter(x, 0.5, 0.0, 0.0, gen())
    ratio = (y / x.clamp_min(1e-6)).flatten(1)
    per_image = ratio.median(dim=1).values
    assert bool(((per_image > 0.5 - 1e-4) & (per_image < 1.5 + 1e-4)).all())
    assert float(per_image.std()) > 0.05  # factors differ per image
    # contrast keeps each image's mean gray (before clipping, on mid-range pixels)
    mid = torch.full((4, 3, 8, 8), 0.5) + 0.1 * (batch(4, 8, 8) - 0.5)
    c = color_jitter(mid, 0.0, 0.5, 0.0, gen())
    gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((c * gray).sum(1).mean((1, 2)), (mid * gray).sum(1).mean((1, 2)), atol=1e-5)


def test_image_augment_from_config_off_by_default_and_runs_all():
    from pretune.config import DataConfig

    assert not ImageAugment.from_config(DataConfig()).active
    aug = ImageAugment.from_config(DataConfig(flip_prob=0.5, rotate_degrees=10, crop_scale=0.5,
                                              noise_std=0.05, salt_pepper=0.02, brightness=0.2,
                                              contrast=0.2, saturation=0.2))
    assert aug.active
    x = batch()
    y = aug(x, gen())
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert math.isfinite(float(y.sum()))
