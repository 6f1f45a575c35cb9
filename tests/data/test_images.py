"""Image data: detection, folders and tables of paths, errors, the decode cache, batches."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pretune.config import DataConfig
from pretune.data import load_task
from pretune.data.images import (
    ImageBatches,
    ImageCache,
    PixelSpec,
    detect_modality,
    is_image_task,
    read_image_inputs,
)
from pretune.errors import DataError
from tests.image_helpers import build_tiny_vit_dir, write_square_folder


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return write_square_folder(tmp_path_factory.mktemp("squares"), per_class=6)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(build_tiny_vit_dir(tmp_path_factory.mktemp("vit")))


def test_a_folder_per_class_is_an_image_task(squares):
    cfg = DataConfig(train=str(squares), valid_fraction=0.34)
    assert detect_modality(cfg) == "image"
    task = load_task(cfg, seed=0)
    assert is_image_task(task)
    assert task.label_names == ["blue", "red"]
    assert len(task.train) + len(task.valid) == 12
    assert all(Path(p).is_absolute() and Path(p).parent.name in ("red", "blue")
               for p in task.train.texts)
    # the label of each image is its folder
    for path, label in zip(task.train.texts, task.train.labels):
        assert Path(path).parent.name == task.label_names[label]


def test_a_csv_of_relative_paths_is_resolved_against_its_folder(squares, tmp_path):
    rows = [(f"{c}/{c}{i}.png", c) for c in ("red", "blue") for i in range(6)]
    table = squares / "index.csv"
    pd.DataFrame(rows, columns=["file", "class"]).to_csv(table, index=False)
    cfg = DataConfig(train=str(table), valid=str(table))
    assert detect_modality(cfg) == "image"
    task = load_task(cfg, seed=0)
    assert task.text_column == "file" and task.label_column == "class"
    assert task.train.texts[0] == str((squares / "red" / "red0.png").resolve())
    assert len(task.valid) == 12 and task.valid_source == "file"


def test_a_text_csv_stays_text_and_modality_overrides(squares, tmp_path):
    text = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a b", "c d"], "label": [0, 1]}).to_csv(text, index=False)
    assert detect_modality(DataConfig(train=str(text))) == "text"
    assert detect_modality(DataConfig(train=str(squares), modality="text")) == "text"


def test_missing_image_file_is_a_data_error_naming_the_row(squares, tmp_path):
    table = tmp_path / "bad.csv"
    pd.DataFrame({"image": [str(squares / "red" / "red0.png"), "nope.png"],
                  "label": ["a", "b"]}).to_csv(table, index=False)
    with pytest.raises(DataError, match=r"row 3 names nope.png"):
        load_task(DataConfig(train=str(table)), seed=0)


def test_a_table_without_image_paths_needs_the_image_column(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"picture": ["x"], "label": ["a"]}).to_csv(table, index=False)
    with pytest.raises(DataError, match="--image-column"):
        load_task(DataConfig(train=str(table), modality="image"), seed=0)


def test_an_unreadable_image_is_a_data_error(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / c / f"{i}.png").write_bytes(b"not a png")
    from pretune.data.images import decode

    spec = PixelSpec(8, 8, 2, None, 1 / 255, None, None)
    with pytest.raises(DataError, match="readable by Pillow"):
        decode(str(tmp_path / "d" / "a" / "0.png"), spec)


def test_decoded_once_then_from_memory_and_disk(squares, processor, tmp_path):
    paths = sorted(str(p) for p in squares.rglob("*.png"))
    spec = PixelSpec.of(processor)
    cache = ImageCache(tmp_path / "cache")
    first = cache.pixels(paths, spec)
    assert first.shape == (12, 3, 32, 32) and first.dtype == np.uint8
    assert cache.misses == 1
    assert np.array_equal(cache.pixels(paths, spec), first) and cache.hits == 1
    other = ImageCache(tmp_path / "cache")  # another process on the same run directory
    assert np.array_equal(other.pixels(paths, spec), first)
    assert other.hits == 1 and other.misses == 0
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 1
    # another size is another key
    bigger = PixelSpec(40, 40, spec.resample, None, spec.rescale, spec.mean, spec.std)
    assert other.pixels(paths, bigger).shape == (12, 3, 40, 40) and other.misses == 1


def test_batches_give_what_the_processor_gives(squares, processor):
    from PIL import Image

    paths = sorted(str(p) for p in squares.rglob("*.png"))
    spec = PixelSpec.of(processor)
    pixels = ImageCache().pixels(paths, spec)
    (batch,) = list(ImageBatches(pixels, np.zeros(len(paths), dtype=np.int64), spec, 64,
                                 shuffle=False))
    expected = processor(images=[Image.open(p).convert("RGB") for p in paths],
                         return_tensors="pt")["pixel_values"]
    assert torch.allclose(batch["pixel_values"], expected, atol=1e-5)
    assert batch["index"].tolist() == list(range(len(paths)))


def test_training_batches_shuffle_and_augment_per_epoch_reproducibly(squares, processor):
    from pretune.data.augment import ImageAugment

    paths = sorted(str(p) for p in squares.rglob("*.png"))
    spec = PixelSpec.of(processor)
    pixels = ImageCache().pixels(paths, spec)
    labels = np.arange(len(paths)) % 2
    aug = ImageAugment(flip_prob=0.5, noise_std=0.05)

    def epoch(e, seed=0):
        b = ImageBatches(pixels, labels, spec, 4, shuffle=True, seed=seed, augment=aug)
        b.set_epoch(e)
        return list(b)

    a0, again, a1 = epoch(0), epoch(0), epoch(1)
    assert len(a0) == 3
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(a0, again))
    assert not torch.equal(a0[0]["pixel_values"], a1[0]["pixel_values"])
    assert sorted(torch.cat([b["index"] for b in a0]).tolist()) == list(range(12))


def test_predict_inputs_from_a_folder_of_images(squares):
    paths, frame = read_image_inputs(str(squares / "red"))
    assert len(paths) == 6 and list(frame.columns) == ["image"]
