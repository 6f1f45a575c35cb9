"""A tiny ViT saved with its image processor, and generated images of two classes (red and
blue squares on noise), for the image tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_tiny_vit_dir(path: Path, *, image_size: int = 32) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    try:  # the Pillow backend by its own name (ViTImageProcessor wants torchvision)
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:  # transformers 4
        from transformers import ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=2)
    path.mkdir(parents=True, exist_ok=True)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def square(color: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """An RGB uint8 image: noise with a red or blue square somewhere on it."""
    img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    side = int(rng.integers(size // 3, size // 2 + 1))
    top, left = rng.integers(0, size - side, size=2)
    channel = 0 if color == "red" else 2
    img[top:top + side, left:left + side, channel] = 230
    return img


def write_square_folder(root: Path, per_class: int = 12, seed: int = 0, size: int = 40) -> Path:
    """root/red/*.png and root/blue/*.png."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for color in ("red", "blue"):
        (root / color).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(square(color, rng, size)).save(root / color / f"{color}{i}.png")
    return root
