"""A tiny BERT and a separable token-level task for fast training-loop tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(num_labels: int = 2, dropout: float = 0.0, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, initializer_range=0.2,
    )
    return BertForSequenceClassification(config)


def separable(n: int = 64, num_labels: int = 2, length: int = 8, seed: int = 0):
    """Class c uses tokens from its own range; lengths vary so padding matters."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_labels
    ids = []
    for y in labels:
        k = int(rng.integers(3, length + 1))
        lo = 5 + 10 * int(y)
        ids.append([1] + rng.integers(lo, lo + 10, size=k).tolist())
    return ids, labels.astype(np.int64)


class ToyBatches:
    """The ``Batches`` interface over lists of token ids: padded dict batches with ``index``."""

    def __init__(self, ids, labels, batch_size, shuffle=False, seed=0):
        self.ids, self.labels, self.batch_size = ids, labels, batch_size or len(ids)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.ids) // self.batch_size)

    def __iter__(self):
        order = np.arange(len(self.ids))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(self.ids[i]) for i in idx)
            input_ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(self.ids[i])] = torch.tensor(self.ids[i])
                mask[row, : len(self.ids[i])] = 1
            yield {"input_ids": input_ids, "attention_mask": mask,
                   "labels": torch.as_tensor(self.labels[idx]), "index": torch.as_tensor(idx)}
