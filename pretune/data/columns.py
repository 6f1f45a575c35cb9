"""Finding the text, text-pair and label columns of a table, and reading texts from them.

Row numbers in messages are counted as a user sees the source (``row_number``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pretune.errors import DataError

logger = logging.getLogger(__name__)


# Detected column names, in order of preference (matched case-insensitively).
TEXT_COLUMNS = (
    "text", "sentence", "sentence1", "question", "question1", "premise", "review", "content",
    "document", "text_a", "sentence_a",
)
PAIR_COLUMNS = ("sentence2", "text_pair", "hypothesis", "question2", "text_b", "sentence_b")
LABEL_COLUMNS = ("label", "labels", "target", "class", "y", "category", "score")
# Text and pair columns that come together (GLUE, SuperGLUE, NLI ...), tried before TEXT_COLUMNS
# so that, for example, QNLI's (question, sentence) is read as a pair, not as one text.
PAIR_SCHEMAS = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("question", "sentence"), ("question", "passage"), ("text", "text_pair"),
    ("text_a", "text_b"), ("sentence_a", "sentence_b"),
)


@dataclass(frozen=True)
class Columns:
    """The columns a table's texts, second texts of pairs and labels are read from."""

    text: str
    pair: str | None
    label: str | None


def find_column(columns: Sequence[str], name: str) -> str | None:
    """The column called ``name``: exact match first, then a unique case-insensitive one."""
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def listing(columns: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def given_column(frame: pd.DataFrame, name: str, flag: str, option: str) -> str:
    """The column a user named with ``option``; DataError when the frame lacks it."""
    found = find_column(list(frame.columns), name)
    if found is None:
        raise DataError(
            f"{flag} must have the column '{name}' given by {option}, but found columns "
            f"({listing(list(frame.columns))}). Pass {option} with one of those names."
        )
    return found


def resolve_columns(
    frame: pd.DataFrame,
    flag: str,
    *,
    text: str | None,
    pair: str | None,
    label: str | None,
    need_label: bool,
    detect_pair: bool = True,
) -> Columns:
    columns = list(frame.columns)

    if label is not None:
        label = given_column(frame, label, flag, "--label-column")
    else:
        label = next((c for n in LABEL_COLUMNS if (c := find_column(columns, n))), None)
        if label is None and need_label:
            raise DataError(
                f"{flag} must have a label column, but found columns ({listing(columns)}). "
                f"Pass --label-column with the name of the label column."
            )

    if pair is not None:
        pair = given_column(frame, pair, flag, "--text-pair-column")
    if text is not None:
        text = given_column(frame, text, flag, "--text-column")
    else:
        for first, second in PAIR_SCHEMAS:
            a, b = find_column(columns, first), find_column(columns, second)
            if a and b and (pair is None and detect_pair or pair == b):
                text, pair = a, b
                break
    if text is None:
        taken = {label, pair}
        text = next((c for n in TEXT_COLUMNS if (c := find_column(columns, n)) and c not in taken), None)
    if text is None:
        # The only column holding text, not counting the label and likely label columns.
        skip = {label, pair} | {c for c in columns if c.lower() in LABEL_COLUMNS}
        texty = [c for c in columns if c not in skip and looks_like_text(frame[c])]
        if len(texty) == 1:
            text = texty[0]
            logger.info("%s: using '%s', its only text column, as the text", flag, text)
    if text is None:
        raise DataError(
            f"{flag} must have a text column, but found columns ({listing(columns)}). "
            f"Pass --text-column with the name of the text column."
        )
    if pair is None and detect_pair:
        taken = {label, text}
        pair = next((c for n in PAIR_COLUMNS if (c := find_column(columns, n)) and c not in taken), None)

    chosen = [c for c in (text, pair, label) if c is not None]
    if len(set(chosen)) < len(chosen):
        raise DataError(
            f"The text, text pair and label columns must differ, but {flag} uses '{text}' for "
            f"text{f', {pair!r} for the pair' if pair else ''} and '{label}' for the label. "
            f"Pass --text-column, --text-pair-column and --label-column with different columns."
        )
    return Columns(text=text, pair=pair, label=label)


def looks_like_text(series: pd.Series) -> bool:
    """True when (a sample of) the column holds strings that are not all numbers."""
    for value in series.head(1000):
        if isinstance(value, str) and value.strip():
            try:
                float(value)
            except ValueError:
                return True
    return False


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def row_number(frame: pd.DataFrame, i: int) -> int:
    return i + int(frame.attrs.get("first_row", 1))


def text_values(frame: pd.DataFrame, column: str, flag: str) -> list[str]:
    """The column as a list of non-empty strings; numbers become their text."""
    out: list[str] = []
    bad: list[int] = []
    first_problem = ""
    for i, value in enumerate(frame[column].tolist()):
        if isinstance(value, str):
            if value.strip():
                out.append(value)
                continue
            problem = "empty"
        elif is_missing(value):
            problem = "empty"
        elif isinstance(value, (bool, int, float, np.number)):
            out.append(str(value))
            continue
        else:
            problem = f"a {type(value).__name__}, not text"
        if not bad:
            first_problem = problem
        bad.append(i)
    if bad:
        raise DataError(
            f"{flag} must have text in every row of column '{column}', but row "
            f"{row_number(frame, bad[0])} is {first_problem} ({len(bad)} such rows in all). Remove "
            f"those rows or fill them in."
        )
    return out
