"""Sampling and holding out rows, stratified by class when the labels allow it."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def sample_rows(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Indices of ``rows`` examples, stratified by label when every class allows it, sorted.
    Regression targets and label sets are sampled plainly."""
    from sklearn.model_selection import train_test_split  # slow to import; only sampling needs it

    idx = np.arange(len(labels))
    if not are_classes(labels):
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed)
        return np.sort(keep)
    try:
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to stratify
        logger.info("Some class is too small to sample stratified; sampling plainly")
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed)
    return np.sort(keep)


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices, stratified by label when every class allows it, each sorted.
    Regression targets and label sets are split plainly."""
    from sklearn.model_selection import train_test_split  # slow to import; only sampling needs it

    idx = np.arange(len(labels))
    if not are_classes(labels):
        train, valid = train_test_split(idx, test_size=fraction, random_state=seed)
        return np.sort(train), np.sort(valid)
    try:
        train, valid = train_test_split(
            idx, test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError:  # a class with a single row, or fewer valid rows than classes
        logger.info("Some class is too small to split stratified; splitting plainly")
        train, valid = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(train), np.sort(valid)


def are_classes(labels: np.ndarray) -> bool:
    """Whether ``labels`` are class ids (one int per row), which can be stratified."""
    return labels.ndim == 1 and labels.dtype.kind in "iu"
