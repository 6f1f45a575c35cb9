"""A run's inputs: tokenized text, token windows or decoded images, and the batches the loop reads.

``fit`` and ``lr_range.range_test`` prepare their data here; ``predict`` reads new inputs the way
a run read its own (its ``max_length``, its token windows). Frozen-feature batches come from the
run's caches when the frozen bottom layers stand in for a cached computation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pretune.config import RunConfig
from pretune.data import text_prep, tokens
from pretune.data.collate import Batches
from pretune.data.images import prepare_images, image_cache
from pretune.data.task import Split, TaskData
from pretune.data.tokenize import Encoded
from pretune.models.features import FeatureBatches, agrees, model_fingerprint
from pretune.training.caches import RunCaches

log = logging.getLogger(__name__)


def prepare_inputs(config: RunConfig, task: TaskData, model, tokenizer, caches: RunCaches, *,
                   image: bool, model_id: str, data_seed: int) -> tuple[RunConfig, Any]:
    """``task``'s train and valid data ready for ``model``: decoded images, token windows, or
    tokenized texts (through ``caches``). Returns the config with what was resolved recorded
    (``max_length``, ``data_seed``, ``modality``), so that a config read back from
    ``pretune.yaml`` repeats the run, and the data (``_Prepared`` unless images)."""
    if image:
        config = replace(config, data=replace(config.data, modality="image", data_seed=data_seed))
        return config, prepare_image_data(config, task, tokenizer, caches)
    if task.kind == "token":
        max_length = config.data.max_length or position_limit(model) or 512
    else:
        max_length = resolve_max_length(config, task, model, tokenizer, caches)
    config = replace(config, data=replace(config.data, max_length=max_length, data_seed=data_seed,
                                          modality="text"))
    if task.kind == "token":
        return config, prepare_token_data(config, task, tokenizer, model_id)
    return config, _Prepared(
        train=caches.tokens.encode(task.train, tokenizer, max_length),
        valid=caches.tokens.encode(task.valid, tokenizer, max_length),
        keys={name: caches.tokens.data_key(split, tokenizer, max_length)
              for name, split in (("train", task.train), ("valid", task.valid))},
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        model_id=model_id,
        augment=_text_augment(config, task, tokenizer, max_length),
    )


@dataclass
class _Prepared:
    """Tokenized train and valid data, their cache keys, and what names the model's weights."""

    train: Encoded
    valid: Encoded
    keys: dict[str, str]
    pad_id: int
    model_id: str
    augment: Any = None  # AugmentedTextBatches maker: (batch_size, seed) -> batches


def _text_augment(config: RunConfig, task: TaskData, tokenizer, max_length: int):
    """A maker of training batches whose texts are edited each epoch, or None when the
    augmentation of ``config`` is off."""
    augment = text_prep.TextAugment.from_config(config.data)
    if not augment.active:
        return None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return lambda batch_size, seed: text_prep.AugmentedTextBatches(
        task.train, augment, tokenizer, max_length, batch_size, pad_id=pad_id, seed=seed)


def token_windows(config: RunConfig, task: TaskData, tokenizer, split: str, *,
                  training: bool = False):
    """``task``'s ``split`` (train or valid) as token windows (``pretune.data.tokens``), at the
    run's max_length and stride. Windows to train on (``training``) label every sub-token when
    the run says so; others only the first sub-token of each word (what scores read)."""
    rows = task.train if split == "train" else task.valid
    every = training and config.data.label_all_subtokens
    return tokens.encode_words(rows.words, rows.labels, tokenizer, config.data.max_length,
                               stride=config.data.stride, all_subtokens=every,
                               inside=tokens.inside_tags(task.label_names))


def prepare_token_data(config: RunConfig, task: TaskData, tokenizer, model_id: str) -> "_Prepared":
    """Train and valid sentences as token windows, keyed for the feature cache by their words
    and tags, the tokenizer and the windowing settings."""
    from pretune.data.cache import tokenizer_fingerprint

    d = config.data
    made = {name: token_windows(config, task, tokenizer, name, training=name == "train")
            for name in ("train", "valid")}
    keys = {}
    for name, split in (("train", task.train), ("valid", task.valid)):
        parts = [split.words, [row.tolist() for row in split.labels], tokenizer_fingerprint(tokenizer),
                 d.max_length, d.stride, d.label_all_subtokens and name == "train"]
        keys[name] = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return _Prepared(train=made["train"].encoded, valid=made["valid"].encoded, keys=keys,
                     pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                     model_id=model_id)


def prepare_image_data(config: RunConfig, task: TaskData, processor, caches: RunCaches):
    """The task's images decoded at the processor's size (once per run directory)."""
    from pretune.data.augment import ImageAugment

    return prepare_images(task, processor, ImageAugment.from_config(config.data),
                          image_cache(caches.directory),
                          model_fingerprint(config.model.model, config.model.revision))


def _features_ready(model, caches: RunCaches, data: _Prepared, depth: int) -> int | None:
    """Compute (or find) the frozen layers' features of train and valid; ``depth``, or None when
    the model does not give its own outputs from them."""
    valid = caches.features_for(model, data.model_id, data.keys["valid"], data.valid, depth,
                                data.pad_id)
    if not agrees(model, data.valid, valid, pad_id=data.pad_id):
        log.warning("%s gives other outputs from cached features; training without the "
                    "feature cache", type(model).__name__)
        return None
    caches.features_for(model, data.model_id, data.keys["train"], data.train, depth, data.pad_id)
    log.info("training from cached features of the %d frozen layers", depth)
    return depth


def _batches(model, caches: RunCaches, data: _Prepared, depth: int | None, batch_size: int,
             eval_batch_size: int, seed: int, *, augment: bool = False) -> tuple[Batches, Batches]:
    """Shuffled training batches and ordered validation batches: of cached features when
    ``depth`` is given, else of tokens (or images). ``augment``: training batches augmented
    as the run's settings say (the lp_ft probe trains without)."""
    if not isinstance(data, _Prepared):  # images
        return data.batches(batch_size, eval_batch_size, seed, augment=augment)
    if depth is None:
        train = (data.augment(batch_size, seed) if augment and data.augment is not None
                 else Batches(data.train, batch_size, pad_id=data.pad_id, shuffle=True, seed=seed))
        return (train, Batches(data.valid, eval_batch_size, pad_id=data.pad_id, shuffle=False))
    feats = {name: caches.features_for(model, data.model_id, data.keys[name], enc, depth, data.pad_id)
             for name, enc in (("train", data.train), ("valid", data.valid))}
    return (FeatureBatches(feats["train"], data.train, batch_size, shuffle=True, seed=seed),
            FeatureBatches(feats["valid"], data.valid, eval_batch_size, shuffle=False))


def resolve_max_length(config: RunConfig, task: TaskData, model, tokenizer,
                       caches: RunCaches) -> int:
    """``max_length`` as given, else measured on the data (once per data and tokenizer, through
    ``caches``); never more than the model's positions."""
    limit = position_limit(model)
    max_length = config.data.max_length or caches.tokens.max_length(_both(task), tokenizer, cap=limit)
    if limit is not None and max_length > limit:
        log.warning("max_length %d is more than the model's %d positions; using %d",
                    max_length, limit, limit)
        max_length = limit
    return max_length


def _both(task: TaskData) -> Split:
    """Train and valid texts together: valid texts may be longer (SST-2's are whole sentences,
    its training rows mostly phrases), and truncating what the model is judged on hurts."""
    pairs = task.train.pairs + task.valid.pairs if task.train.pairs is not None else None
    return Split(task.train.texts + task.valid.texts, pairs,
                 np.concatenate([task.train.labels, task.valid.labels]))


def position_limit(model) -> int | None:
    """The longest input the model's position embeddings allow."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    if "roberta" in str(getattr(config, "model_type", "")) or "camembert" in str(getattr(config, "model_type", "")):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1  # positions start after padding_idx
    return int(limit)
