"""Batches with dynamic padding: each batch is padded to its own longest example.

Examples of similar length are batched together (bucketing) so little compute goes to padding:

- Training (``shuffle=True``): a seeded permutation per (seed, epoch) is cut into chunks of
  ``50 * batch_size``; each chunk is sorted by length and cut into batches, and the order of all
  batches is shuffled. Batches stay random, but their members have similar lengths.
- Evaluation (``shuffle=False``): examples are sorted by length, longest first (so running out of
  memory shows up at once), and cut into batches.

Token classification labels (one per token, an object array of arrays) are padded with -100,
the loss's ignore_index, to the batch's width.

Every batch carries an ``"index"`` tensor with the original row of each example, so callers
can put predictions back in input order (pop it before calling the model).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from pretune.data.tokenize import Encoded, label_array

_BUCKET_BATCHES = 50  # batches per sorted chunk when shuffling with buckets


class Batches:
    """Padded batches of an ``Encoded`` set, re-shuffled each epoch (see ``set_epoch``).

    ``batch_size=None`` puts the whole set in one batch (full-batch gradient descent).
    Each batch is a dict of long tensors: ``input_ids``, ``attention_mask``, ``token_type_ids``
    (when the encoding has them), ``labels`` (when it has labels) and ``index``.
    """

    def __init__(
        self,
        encoded: Encoded,
        batch_size: int | None,
        *,
        pad_id: int,
        shuffle: bool,
        seed: int = 0,
        bucket: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.encoded = encoded
        self.batch_size = batch_size
        self.pad_id = int(pad_id)
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.encoded)
        if self.batch_size is None:
            return 1 if n else 0
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The row indices of every batch of ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.encoded)
        if n == 0:
            return []
        size = self.batch_size or n
        lengths = self.encoded.lengths
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            if self.bucket and size < n:
                chunk = size * _BUCKET_BATCHES
                order = np.concatenate([
                    part[np.argsort(lengths[part], kind="stable")]
                    for part in np.split(order, list(range(chunk, n, chunk)))
                ])
        else:
            rng = None
            order = np.arange(n)
            if self.bucket and size < n:
                order = np.argsort(-lengths, kind="stable")
        # Chunks hold whole batches, so only the last batch can be short.
        batches = np.split(order, list(range(size, n, size)))
        if self.drop_last and len(batches[-1]) < size:
            batches.pop()
        if rng is not None and self.bucket:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.batch_indices():
            yield self._collate(idx)

    def _collate(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        enc = self.encoded
        lengths = enc.lengths[idx]
        width = int(lengths.max())
        input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        types = None if enc.token_type_ids is None else np.zeros_like(input_ids)
        for row, (i, n) in enumerate(zip(idx, lengths)):
            input_ids[row, :n] = enc.input_ids[i]
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = enc.token_type_ids[i]  # type: ignore[index]
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
        }
        if types is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        if enc.labels is not None:
            batch["labels"] = batch_labels(enc.labels, idx, width)
        batch["index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return batch


def batch_labels(labels: np.ndarray, idx: np.ndarray, width: int) -> torch.Tensor:
    """The labels of rows ``idx``: one per example, or (token classification: an object array
    of per-token arrays) one per token, padded with -100 to ``width``."""
    if labels.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(label_array(labels[idx])))
    out = np.full((len(idx), width), -100, dtype=np.int64)
    for row, i in enumerate(idx):
        out[row, :len(labels[i])] = labels[i]
    return torch.from_numpy(out)
