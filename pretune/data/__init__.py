"""Data: reading tables, column and label checks, splits, tokenization and batching.

Importing this package does not import torch; ``Batches`` (which needs it) loads on first use.
"""

from __future__ import annotations

from typing import Any

from pretune.data.readers import dataset_splits, is_dataset_source, read_table
from pretune.data.task import Split, TaskData, load_task, read_inputs
from pretune.data.tokenize import Encoded, choose_max_length, encode

__all__ = [
    "Batches",
    "Encoded",
    "Split",
    "TaskData",
    "choose_max_length",
    "dataset_splits",
    "encode",
    "is_dataset_source",
    "load_task",
    "read_inputs",
    "read_table",
]


def __getattr__(name: str) -> Any:
    if name == "Batches":
        from pretune.data.collate import Batches

        return Batches
    raise AttributeError(f"module 'pretune.data' has no attribute {name!r}")
