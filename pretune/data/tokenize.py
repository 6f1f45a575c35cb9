"""Tokenization: choosing a maximum length from the data, and encoding texts without padding.

Padding happens per batch in ``pretune.data.collate``; here every example keeps its own length.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from pretune.data.examples import Split

logger = logging.getLogger(__name__)

_LENGTH_SAMPLE = 5_000  # texts measured by choose_max_length
_CHUNK = 10_000  # texts per tokenizer call in encode
_SANE_MODEL_MAX = 100_000  # tokenizers without a limit report a huge model_max_length


@dataclass
class Encoded:
    """Token ids of every example (unpadded), optional token type ids, optional labels (see
    ``label_array``)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each example, int64, shape (n,)."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))


def _model_max(tokenizer: Any) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _SANE_MODEL_MAX else None


def choose_max_length(
    split: Split, tokenizer: Any, cap: int | None = None, quantile: float = 0.99
) -> int:
    """A max_length covering ``quantile`` of the examples' untruncated token lengths.

    Measured on (a seeded sample of up to 5,000 of) the examples, rounded up to a multiple of 8,
    at least 8, then capped by ``cap`` and by the tokenizer's ``model_max_length`` when that is
    a real limit.
    """
    n = len(split)
    if n == 0:
        length = 8
    else:
        idx = np.arange(n)
        if n > _LENGTH_SAMPLE:
            idx = np.sort(np.random.default_rng(0).choice(n, _LENGTH_SAMPLE, replace=False))
        texts = [split.texts[i] for i in idx]
        pairs = None if split.pairs is None else [split.pairs[i] for i in idx]
        # verbose=False: no warning about sequences longer than the model's limit; measuring
        # them is the point.
        ids = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)["input_ids"]
        lengths = np.array([len(x) for x in ids])
        length = max(8, int(math.ceil(float(np.quantile(lengths, quantile)) / 8) * 8))
    for limit in (cap, _model_max(tokenizer)):
        if limit is not None:
            length = min(length, int(limit))
    logger.info("max_length %d (%g quantile of %d examples' token lengths)", length, quantile, n)
    return length


def encode(
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    labels: Sequence[int] | np.ndarray | None,
    tokenizer: Any,
    max_length: int,
) -> Encoded:
    """Tokenize ``texts`` (and ``pairs``), truncated to ``max_length`` tokens, unpadded.

    Pairs are truncated longest-first. Token type ids are kept only for pairs and only when the
    tokenizer makes them: for single texts they are all zeros, which models assume when none
    are given.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    want_types = pairs is not None and "token_type_ids" in getattr(
        tokenizer, "model_input_names", ["token_type_ids"]
    )
    input_ids: list[list[int]] = []
    type_ids: list[list[int]] | None = [] if want_types else None
    for start in range(0, len(texts), _CHUNK):
        out = tokenizer(
            list(texts[start:start + _CHUNK]),
            None if pairs is None else list(pairs[start:start + _CHUNK]),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=want_types,
        )
        input_ids.extend(out["input_ids"])
        if type_ids is not None:
            type_ids.extend(out["token_type_ids"])
    return Encoded(
        input_ids=input_ids,
        token_type_ids=type_ids,
        labels=None if labels is None else label_array(labels),
    )


def label_array(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels as a model's targets: int64 class ids, or float32 regression targets and
    multi-label indicators."""
    array = np.asarray(labels)
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    return array.astype(np.float32, copy=False)
