"""Image classification data: reading image sets, decoding once, and batches with augmentation.

Sources (``--train``, ``--valid``, and ``pretune predict --input``):

- a folder with a subfolder per class (``DIR/cat/*.png``, ``DIR/dog/*.jpg``): the subfolder's
  name is the label (files in nested folders count for the class folder above them);
- a CSV, TSV, JSON lines or Parquet table with a column of image paths (relative paths are
  resolved against the table's folder) and a label column.

``modality="auto"`` (the default) takes a source as images when it is such a folder, or a table
with a column whose values are all paths ending in an image extension; ``image_column`` names
the column, ``modality="image"`` or ``"text"`` decides without detection.

Images are decoded with Pillow, converted to RGB and resized as the model's image processor
does (its ``size``, ``resample`` and, for processors that resize the shortest edge, a center
crop), once: the uint8 pixels of a whole split are cached in memory and, given a directory, as
``.npy`` files keyed by the files' content and the processor's size, so every trial of a search
and any process on the run directory share them. ``ImageBatches`` turns them into normalized
``pixel_values`` (mean and std from the processor), augmenting training batches on the fly
(``pretune.data.augment``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from pretune.data.columns import (
    LABEL_COLUMNS, find_column, given_column, is_missing, listing, row_number,
)
from pretune.data.examples import Split, TaskData
from pretune.data.labels import class_ids, class_names
from pretune.data.readers import is_hub_name, read_table
from pretune.data.sampling import holdout, sample_rows
from pretune.errors import DataError, MissingExtraError
from pretune.outdir import atomic_write

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Column names tried first when several columns hold image paths.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "img")
FORMAT = 1  # of the cached pixel arrays
_DETECT_ROWS = 200  # values looked at to decide whether a column holds image paths


@dataclass
class ImageTaskData(TaskData):
    """A checked image classification task: ``Split.texts`` hold absolute image paths."""

    modality = "image"


def is_image_task(task: Any) -> bool:
    return isinstance(task, ImageTaskData)


# --- detection ---------------------------------------------------------------------------------


def _is_image_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(directory: Path) -> list[Path]:
    """Subfolders of ``directory`` that hold image files (at any depth), sorted by name."""
    found = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(_is_image_path(f.name) for f in sub.rglob("*") if f.is_file()):
            found.append(sub)
    return found


def is_image_folder(source: str | os.PathLike) -> bool:
    """True when ``source`` is a folder (not a saved dataset) with class subfolders of images."""
    path = Path(os.path.expanduser(str(source)))
    if not path.is_dir() or (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return False
    return bool(_class_folders(path))


def image_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose values (a sample of them) are all paths ending in an image extension."""
    out = []
    for column in frame.columns:
        values = [v for v in frame[column].head(_DETECT_ROWS).tolist() if not is_missing(v)]
        if values and all(_is_image_path(v) for v in values):
            out.append(str(column))
    return out


def detect_modality(cfg: Any) -> str:
    """``cfg.modality`` when it is ``text`` or ``image``; else ``image`` for an image folder or a
    table with an image-path column (or ``image_column`` given), and ``text`` for anything else
    (including a source that cannot be read: loading it then says why)."""
    if cfg.modality != "auto":
        return cfg.modality
    if cfg.image_column:
        return "image"
    if not cfg.train:
        return "text"
    if is_image_folder(cfg.train):
        return "image"
    path = Path(os.path.expanduser(str(cfg.train)))
    if path.is_dir() or (not path.exists() and is_hub_name(str(cfg.train))):
        return "text"
    try:
        frame = read_table(cfg.train)
    except Exception:  # noqa: BLE001 - load_task reports an unreadable source properly
        return "text"
    return "image" if image_columns(frame) else "text"


# --- reading -----------------------------------------------------------------------------------


def folder_frame(directory: Path, flag: str) -> pd.DataFrame:
    """A table of ``image`` (absolute path) and ``label`` (the class folder's name)."""
    folders = _class_folders(directory)
    if not folders:
        raise DataError(
            f"{flag} as a folder of images must hold a subfolder per class with image files "
            f"({', '.join(IMAGE_EXTENSIONS)}), but {directory} has none. Put each class's "
            f"images in a folder named after the class."
        )
    rows = [(str(f.resolve()), sub.name) for sub in folders
            for f in sorted(sub.rglob("*")) if f.is_file() and _is_image_path(f.name)]
    frame = pd.DataFrame(rows, columns=["image", "label"])
    frame.attrs["first_row"] = 1
    return frame


def _read(source: str, flag: str, image_column: str | None, need_label: bool,
          prefer: str | None = None, label_column: str | None = None) -> tuple[pd.DataFrame, str, str | None, Path]:
    """The table of ``source``, its image column (``image_column``, else ``prefer`` when the
    table has it, else detected), its label column and the folder relative paths start from."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        frame = folder_frame(path, flag)
        return frame, "image", "label" if need_label else None, path
    frame = read_table(source)
    columns = list(frame.columns)
    if image_column:
        column = given_column(frame, image_column, flag, "--image-column")
    elif prefer is not None and find_column(columns, prefer):
        column = find_column(columns, prefer)
    else:
        found = image_columns(frame)
        preferred = [c for n in IMAGE_COLUMNS if (c := find_column(found, n))]
        column = (preferred or found or [None])[0]
        if column is None:
            raise DataError(
                f"{flag} must have a column of image paths (ending in {', '.join(IMAGE_EXTENSIONS)}), "
                f"but found columns ({listing(columns)}). Pass --image-column with the name of "
                f"that column, or a folder with a subfolder per class."
            )
        if len(found) > 1 and not preferred:
            log.info("%s: several columns hold image paths (%s); using '%s'", flag,
                     ", ".join(found), column)
    label = None
    if need_label and label_column:
        label = given_column(frame, label_column, flag, "--label-column")
    elif need_label:
        label = next((c for n in LABEL_COLUMNS if (c := find_column(columns, n)) and c != column), None)
        if label is None:
            raise DataError(
                f"{flag} must have a label column, but found columns ({listing(columns)}). "
                f"Pass --label-column with the name of the label column."
            )
    return frame, column, label, path.parent


def _paths(frame: pd.DataFrame, column: str, base: Path, flag: str) -> list[str]:
    """Absolute paths of the column's images; DataError for an empty cell or a missing file."""
    out: list[str] = []
    for i, value in enumerate(frame[column].tolist()):
        if is_missing(value) or not str(value).strip():
            raise DataError(
                f"{flag} must have an image path in every row of column '{column}', but row "
                f"{row_number(frame, i)} is empty. Remove that row or fill it in."
            )
        p = Path(os.path.expanduser(str(value).strip()))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise DataError(
                f"Every image that {flag} names must exist, but row {row_number(frame, i)} names "
                f"{value} and there is no file at {p}. Fix the path (relative paths start at "
                f"the table's folder) or remove the row."
            )
        out.append(str(p.resolve()))
    return out


def load_image_task(cfg: Any, seed: int) -> ImageTaskData:
    """``load_task`` for images: read, check, sample and split the data ``cfg`` names."""
    frame, column, label, base = _read(cfg.train, "--train", cfg.image_column, True,
                                       label_column=cfg.label_column)
    assert label is not None
    paths = _paths(frame, column, base, "--train")
    names, order = class_names(frame, label, "--train")
    found = set(names)
    if len(found) < 2:
        raise DataError(
            f"--train needs at least two classes, but every image has label {found.pop()!r}. "
            f"Pass images of two or more classes."
        )
    label_names, label2id, ids = class_ids(names, order)
    train = Split(paths, None, ids)
    if cfg.train_rows is not None and cfg.train_rows < len(train):
        train = train.subset(sample_rows(train.labels, cfg.train_rows, seed))
    if cfg.valid:
        vframe, vcolumn, vlabel, vbase = _read(cfg.valid, "--valid", cfg.image_column, True,
                                               prefer=column, label_column=cfg.label_column)
        vpaths = _paths(vframe, vcolumn, vbase, "--valid")
        vnames, _ = class_names(vframe, vlabel, "--valid")
        unknown = sorted(set(vnames) - set(label2id))
        if unknown:
            raise DataError(
                f"--valid must only have labels that --train has ({listing(label_names, 10)}), "
                f"but it also has {', '.join(unknown[:10])}. Remove those images or add examples "
                f"of them to --train."
            )
        valid = Split(vpaths, None, np.array([label2id[n] for n in vnames], dtype=np.int64))
        valid_source = "file"
    else:
        train_idx, valid_idx = holdout(train.labels, cfg.valid_fraction, seed)
        train, valid = train.subset(train_idx), train.subset(valid_idx)
        valid_source = "split"
    log.info("images: %d training and %d validation images, %d classes", len(train), len(valid),
             len(label_names))
    return ImageTaskData(
        train=train, valid=valid, label_names=label_names, text_column=column,
        text_pair_column=None, label_column=label,
        fingerprint=_fingerprint(column, label, label_names, train, valid),
        valid_source=valid_source,
    )


def read_image_inputs(source: str, image_column: str | None = None, prefer: str | None = None
                      ) -> tuple[list[str], pd.DataFrame]:
    """Image paths to predict on (a folder of images, a folder of class folders, or a table) and
    the frame they came from (its ``image`` column holds the resolved paths for a folder)."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and _is_image_path(f.name))
        if not files:
            raise DataError(
                f"--input as a folder must hold image files ({', '.join(IMAGE_EXTENSIONS)}), but "
                f"{path} has none. Pass a folder of images or a table of image paths."
            )
        frame = pd.DataFrame({"image": [str(f.resolve()) for f in files]})
        return list(frame["image"]), frame
    frame, column, _, base = _read(str(source), "--input", image_column, False, prefer=prefer)
    return _paths(frame, column, base, "--input"), frame


def _fingerprint(column: str, label: str, label_names: list[str], train: Split, valid: Split) -> str:
    h = hashlib.sha256(json.dumps(["image", column, label, label_names]).encode())
    for split in (train, valid):
        h.update(json.dumps([file_digest(p) for p in split.texts]).encode())
        h.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
    return h.hexdigest()


# --- decoding, once --------------------------------------------------------------------------


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (remembered per path, size and modification time)."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        with open(path, "rb") as f:
            found = hashlib.file_digest(f, "sha256").hexdigest()
        _DIGESTS[key] = found
    return found


@dataclass(frozen=True)
class PixelSpec:
    """How an image processor turns an image into ``pixel_values``: resize, crop, scale."""

    height: int
    width: int
    resample: int  # PIL resampling filter
    shortest_edge: int | None  # resize the shortest edge to this, then center-crop
    rescale: float | None  # the processor's rescale factor (1/255), None when it does not rescale
    mean: tuple[float, float, float] | None  # None when it does not normalize
    std: tuple[float, float, float] | None

    @classmethod
    def of(cls, processor: Any) -> "PixelSpec":
        size = dict(getattr(processor, "size", None) or {})
        crop = dict(getattr(processor, "crop_size", None) or {}) if getattr(
            processor, "do_center_crop", False) else {}
        shortest = size.get("shortest_edge")
        if "height" in size and "width" in size:
            h, w = int(size["height"]), int(size["width"])
        elif crop:
            h, w = int(crop["height"]), int(crop["width"])
        elif shortest:
            h = w = int(shortest)
        else:
            raise DataError(
                f"pretune resizes images as the model's image processor says, but "
                f"{type(processor).__name__} gives no size it can use ({size}). Pick a model "
                f"whose preprocessor_config.json has size height/width or shortest_edge."
            )
        resample = getattr(processor, "resample", None)
        resample = 2 if resample is None else int(getattr(resample, "value", resample))

        def triple(v):
            v = list(v) if isinstance(v, (list, tuple)) else [float(v)] * 3
            return tuple(float(x) for x in v[:3])

        normalize = getattr(processor, "do_normalize", True)
        return cls(
            height=h, width=w, resample=resample,
            shortest_edge=int(shortest) if shortest and "height" not in size else None,
            rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None,
            mean=triple(processor.image_mean) if normalize else None,
            std=triple(processor.image_std) if normalize else None,
        )


def decode(path: str, spec: PixelSpec) -> np.ndarray:
    """One image as uint8 (3, height, width): RGB, resized as ``spec`` says."""
    try:
        from PIL import Image, UnidentifiedImageError  # an optional extra, imported when used
    except ImportError:
        raise MissingExtraError("pillow", "images", "Reading images") from None

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if spec.shortest_edge is not None:
                w, h = img.size
                scale = spec.shortest_edge / min(w, h)
                img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                 resample=spec.resample)
                w, h = img.size
                left, top = (w - spec.width) // 2, (h - spec.height) // 2
                img = img.crop((left, top, left + spec.width, top + spec.height))
            elif img.size != (spec.width, spec.height):
                img = img.resize((spec.width, spec.height), resample=spec.resample)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(
            f"Every image must be readable by Pillow, but {path} is not ({err}). Remove or "
            f"replace that file."
        ) from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class ImageCache:
    """Decoded images of whole splits, by key, in memory and as ``.npy`` files in ``directory``."""

    _MEMORY_ITEMS = 8

    def __init__(self, directory: str | Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, paths: Sequence[str], spec: PixelSpec) -> str:
        parts = [FORMAT, spec.height, spec.width, spec.resample, spec.shortest_edge,
                 [file_digest(p) for p in paths]]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def pixels(self, paths: Sequence[str], spec: PixelSpec) -> np.ndarray:
        """uint8 (n, 3, height, width) of ``paths``: decoded once, then from the cache."""
        key = self.key(paths, spec)
        found = self._memory.get(key)
        file = None if self.directory is None else self.directory / f"images-{key}.npy"
        if found is None and file is not None and file.is_file():
            try:
                found = np.load(file, allow_pickle=False)
                if found.shape != (len(paths), 3, spec.height, spec.width):
                    found = None
            except (OSError, ValueError) as err:
                log.warning("ignoring an unreadable cache file %s (%s)", file, err)
                found = None
        if found is None:
            self.misses += 1
            found = np.stack([decode(p, spec) for p in paths]) if paths else np.zeros(
                (0, 3, spec.height, spec.width), dtype=np.uint8)
            if file is not None:
                _save_atomic(file, found)
        else:
            self.hits += 1
        self._memory[key] = found
        self._memory.move_to_end(key)
        while len(self._memory) > self._MEMORY_ITEMS:
            self._memory.popitem(last=False)
        return found


def _save_atomic(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, since np.save adds .npy to a path without it
            np.save(f, array, allow_pickle=False)

    try:
        atomic_write(path, write)
    except OSError as err:  # a full or read-only disk costs speed, not the run
        log.warning("could not write the image cache %s (%s)", path, err)


_CACHES: dict[str | None, ImageCache] = {}


def image_cache(directory: str | Path | None) -> ImageCache:
    """The process's image cache for ``directory`` (None: in memory only)."""
    key = None if directory is None else str(Path(directory).resolve())
    if key not in _CACHES:
        _CACHES[key] = ImageCache(directory)
    return _CACHES[key]


# --- batches -----------------------------------------------------------------------------------


class ImageBatches:
    """Batches of ``pixel_values`` (normalized as ``spec`` says), ``labels`` and ``index``.

    ``shuffle=True`` draws a new order per (seed, epoch) (see ``set_epoch``); ``augment`` (a
    callable ``(x, generator) -> x`` on [0, 1] pixels, e.g. ``ImageAugment``) runs on every
    batch with a generator seeded by (seed, epoch), so a run repeats exactly."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None, spec: PixelSpec,
                 batch_size: int | None, *, shuffle: bool, seed: int = 0,
                 augment: Callable | None = None):
        self.pixels = pixels
        self.labels = labels
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.pixels)
        return (1 if n else 0) if self.batch_size is None else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        import torch  # torch loads only when this runs

        n = len(self.pixels)
        if n == 0:
            return
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        size = self.batch_size or n
        gen = torch.Generator().manual_seed(int(self.seed) * 100_003 + self.epoch)
        for start in range(0, n, size):
            idx = order[start:start + size]
            x = torch.from_numpy(self.pixels[idx]).float() / 255.0
            if self.augment is not None:
                x = self.augment(x, gen)
            batch = {"pixel_values": normalize(x, self.spec),
                     "index": torch.from_numpy(np.asarray(idx, dtype=np.int64))}
            if self.labels is not None:
                batch["labels"] = torch.from_numpy(np.ascontiguousarray(self.labels[idx], dtype=np.int64))
            yield batch


def normalize(x, spec: PixelSpec):
    """[0, 1] pixels to what the processor gives the model: rescaled, then (x - mean) / std."""
    import torch  # torch loads only when this runs

    x = x * (255.0 * spec.rescale) if spec.rescale is not None else x * 255.0
    if spec.mean is not None:
        mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


@dataclass
class ImagePrepared:
    """A run's decoded train and valid images, with what keys them (the run's data object)."""

    train: np.ndarray
    valid: np.ndarray
    train_labels: np.ndarray
    valid_labels: np.ndarray
    spec: PixelSpec
    augment: Any  # ImageAugment
    keys: dict[str, str]
    model_id: str
    pad_id: int = 0

    def batches(self, batch_size: int, eval_batch_size: int, seed: int, *, augment: bool = True
                ) -> tuple[ImageBatches, ImageBatches]:
        aug = self.augment if augment and self.augment is not None and self.augment.active else None
        return (ImageBatches(self.train, self.train_labels, self.spec, batch_size, shuffle=True,
                             seed=seed, augment=aug),
                ImageBatches(self.valid, self.valid_labels, self.spec, eval_batch_size,
                             shuffle=False))


def prepare_images(task: ImageTaskData, processor: Any, augment: Any, cache: ImageCache,
                   model_id: str) -> ImagePrepared:
    """Decode (or find) the task's images at the processor's size."""
    spec = PixelSpec.of(processor)
    train = cache.pixels(task.train.texts, spec)
    valid = cache.pixels(task.valid.texts, spec)
    keys = {"train": cache.key(task.train.texts, spec), "valid": cache.key(task.valid.texts, spec)}
    return ImagePrepared(train=train, valid=valid, train_labels=task.train.labels,
                         valid_labels=task.valid.labels, spec=spec, augment=augment, keys=keys,
                         model_id=model_id)
