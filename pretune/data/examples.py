"""What a checked task is: its splits of examples, its labels and its kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

TASK_KINDS = ("classification", "regression", "multilabel", "token")
# transformers' problem_type knows no token task; "token_classification" is ours (it selects
# AutoModelForTokenClassification and is not written into a model's config).
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression",
                 "multilabel": "multi_label_classification", "token": "token_classification"}


@dataclass
class Split:
    """The examples of one split: texts, optional second texts of a pair, and labels."""

    texts: list[str]
    pairs: list[str] | None  # second text of a pair task, else None
    # classification: int64 label ids (n,); regression: float64 targets in the data's own
    # units (n,); multilabel: float32 0/1 indicators (n, number of labels); token: an object
    # array of int64 tag-id arrays, one per sentence, one id per word
    labels: np.ndarray
    words: list[list[str]] | None = None  # token: each sentence's words (texts: them joined)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        """The examples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=self.labels[idx],
            words=None if self.words is None else [self.words[i] for i in idx],
        )


@dataclass
class TaskData:
    """A checked task, ready to tokenize."""

    train: Split
    valid: Split
    # index = label id; used as id2label. Regression: the label column's name (one output).
    label_names: list[str]
    text_column: str
    text_pair_column: str | None
    label_column: str
    fingerprint: str  # sha256 hex of the train+valid content (texts, pairs, labels) and columns
    valid_source: str  # "file": separate validation data (a file or a dataset split);
    # "split": held out of the training data
    kind: str = "classification"  # classification | regression | multilabel | token
    scheme: str | None = None  # token: the tag scheme (IOB1, IOB2, BIOES)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def problem_type(self) -> str:
        """The task in transformers' words (``PretrainedConfig.problem_type``)."""
        return PROBLEM_TYPES[self.kind]

    def target_scale(self) -> tuple[float, float]:
        """Regression: (mean, std) of the training targets, the standardization saved with a
        model; (0, 1) when every target is the same (nothing to scale by)."""
        y = np.asarray(self.train.labels, dtype=np.float64)
        mean, std = float(y.mean()), float(y.std())
        return (mean, std) if std > 0 and math.isfinite(std) else (mean, 1.0)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}
