"""Labels: which task a label column holds, and reading it as classes, targets or label sets."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from pretune.data.columns import is_missing, row_number
from pretune.errors import DataError

INT_TEXT = re.compile(r"^\s*[+-]?\d+(\.0*)?\s*$")
# Whole-number labels are class codes when they are few (at most this many distinct values) or
# exactly 0..k-1 or 1..k; other whole numbers (counts, years, prices) are regression targets.
MAX_CODED_CLASSES = 50


def detect_task(frame: pd.DataFrame, column: str, *, task: str = "auto",
                delimiter: str | None = None) -> str:
    """The task the label ``column`` holds, unless ``task`` names one.

    - multilabel: lists (JSON lines, Parquet, datasets), texts that are JSON lists
      (``'["a", "b"]'`` in a CSV), or any labels when ``delimiter`` is given;
    - regression: numbers that are not all whole, or whole numbers that do not look like class
      codes (more than ``MAX_CODED_CLASSES`` distinct values that are not 0..k-1 or 1..k);
    - classification: everything else, so integer-coded classes (0/1, 0..4) stay classes.
    """
    if task != "auto":
        return task
    if delimiter is not None:
        return "multilabel"
    if frame.attrs.get("class_names", {}).get(column) is not None:
        return "classification"
    values = [v for v in frame[column].tolist() if not is_missing(v)]
    if not values:
        return "classification"  # class_names reports the missing labels
    if all(is_list(v) or (isinstance(v, str) and json_list(v) is not None) for v in values):
        return "multilabel"
    numbers = [as_number(v) for v in values]
    if any(x is None for x in numbers):
        return "classification"
    if not all(float(x).is_integer() for x in numbers):  # type: ignore[union-attr]
        return "regression"
    distinct = sorted({int(x) for x in numbers})  # type: ignore[arg-type]
    coded = distinct in (list(range(len(distinct))), list(range(1, len(distinct) + 1)))
    return "classification" if coded or len(distinct) <= MAX_CODED_CLASSES else "regression"


def class_ids(names: list[str], order: Any) -> tuple[list[str], dict[str, int], np.ndarray]:
    """From each row's class name and ``class_names``'s ordering: the names in id order, the id
    of each name, and each row's id."""
    label_names = order(set(names))
    label2id = {name: i for i, name in enumerate(label_names)}
    return label_names, label2id, np.array([label2id[n] for n in names], dtype=np.int64)


def class_names(frame: pd.DataFrame, column: str, flag: str) -> tuple[list[str], Any]:
    """Each row's label as a name, and a function that orders a set of names into ids.

    Whole numbers (ints, integral floats, digit strings from CSV) are ordered numerically, Hugging
    Face ``ClassLabel`` names keep the dataset's order, anything else is sorted as strings.
    """
    values = frame[column].tolist()
    class_names: list[str] | None = frame.attrs.get("class_names", {}).get(column)

    def missing(i: int, what: str) -> DataError:
        return DataError(
            f"{flag} must have a label in every row of column '{column}', but row "
            f"{row_number(frame, i)} has {what}. Remove that row or give it a label."
        )

    for i, value in enumerate(values):
        if is_missing(value) or (isinstance(value, str) and not value.strip()):
            raise missing(i, "none")

    if class_names is not None:  # a datasets ClassLabel: ids index its names
        names = []
        for i, value in enumerate(values):
            if not 0 <= int(value) < len(class_names):
                raise missing(i, f"{value} (not one of its {len(class_names)} classes)")
            names.append(class_names[int(value)])
        return names, lambda found: list(class_names)

    if all(is_whole(v) for v in values):
        names = [str(int(float(v))) for v in values]
        return names, lambda found: sorted(found, key=int)
    names = [v.strip() if isinstance(v, str) else str(v) for v in values]
    return names, lambda found: sorted(found)


def is_whole(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return float(value).is_integer()
    return isinstance(value, str) and bool(INT_TEXT.match(value))


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def json_list(text: str) -> list | None:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def as_number(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric texts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def regression_targets(frame: pd.DataFrame, column: str, flag: str) -> np.ndarray:
    """The regression targets of ``column`` as float64; DataError names the first bad row."""
    out = np.empty(len(frame), dtype=np.float64)
    for i, value in enumerate(frame[column].tolist()):
        x = None if is_missing(value) else as_number(value)
        if x is None:
            what = "no target" if is_missing(value) else f"{value!r}, not a finite number"
            raise DataError(
                f"Regression needs a number in every row of column '{column}', but {flag} row "
                f"{row_number(frame, i)} has {what}. Fix or remove that row, or --set "
                f"task=classification if the labels are classes."
            )
        out[i] = x
    return out


def label_sets(frame: pd.DataFrame, column: str, flag: str,
                delimiter: str | None) -> list[set[str]]:
    """Each row's set of label names: lists, JSON-list texts, or texts split on ``delimiter``."""
    out: list[set[str]] = []
    for i, value in enumerate(frame[column].tolist()):
        if is_list(value):
            items = list(value)
        elif delimiter is not None and (is_missing(value) or isinstance(value, str)):
            items = [] if is_missing(value) else value.split(delimiter)
        elif isinstance(value, str) and (found := json_list(value)) is not None:
            items = found
        else:
            how = (f"texts split on {delimiter!r}" if delimiter is not None else
                   'lists such as ["sports", "politics"] ([] for none)')
            raise DataError(
                f"Multi-label data needs a list of labels in every row of column '{column}', "
                f"but {flag} row {row_number(frame, i)} has {value!r}. Write the labels as {how}, "
                f"or pass --set label_delimiter='|' for texts like 'sports|politics'."
            )
        names = set()
        for item in items:
            if is_missing(item) or isinstance(item, (list, dict, tuple)):
                raise DataError(
                    f"Multi-label lists must hold label names, but {flag} row {row_number(frame, i)} of "
                    f"column '{column}' holds {item!r}. Write each label as a name or a number."
                )
            name = str(int(item)) if is_whole(item) and not isinstance(item, str) else str(item).strip()
            if name:
                names.add(name)
        out.append(names)
    return out


def order_names(found: set[str]) -> list[str]:
    """Label names in id order: numerically when all are whole numbers, else sorted."""
    if all(INT_TEXT.match(n) for n in found):
        return sorted(found, key=lambda n: int(float(n)))
    return sorted(found)


def indicators(sets: list[set[str]], label2id: dict[str, int]) -> np.ndarray:
    """0/1 indicators (n, number of labels), float32: the targets of a multi-label model."""
    out = np.zeros((len(sets), len(label2id)), dtype=np.float32)
    for row, names in enumerate(sets):
        for name in names:
            out[row, label2id[name]] = 1.0
    return out
