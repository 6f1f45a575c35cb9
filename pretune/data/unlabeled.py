"""Unlabeled texts for continued pretraining (``--unlabeled``).

A ``.txt`` file (optionally ``.gz``) holds one text per line; blank lines are skipped. Any table
``read_table`` reads (CSV, JSONL, Parquet, a dataset directory) gives the texts of its text
column: ``text_column`` when given, else the first of the usual names, else its only column.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from pretune.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body")


def read_unlabeled(source: str, text_column: str | None = None) -> list[str]:
    """The texts of ``source``; DataError when it is missing, unreadable or has none."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"--unlabeled must be a file of texts, but {source} does not exist. Give a .txt file "
            f"with one text per line, or a CSV/JSONL/Parquet file with a text column."
        )
    name = path.name.lower().removesuffix(".gz")
    if path.is_file() and name.endswith(".txt"):
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                texts = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(
                f"--unlabeled must be a UTF-8 text file, but {source} cannot be read ({err}). "
                f"Save it as UTF-8 text, one text per line."
            ) from None
    else:
        from pretune.data.readers import read_table

        frame = read_table(str(path))
        column = text_column if text_column in frame.columns else next(
            (c for c in TEXT_COLUMNS if c in frame.columns),
            frame.columns[0] if len(frame.columns) == 1 else None)
        if column is None:
            raise DataError(
                f"--unlabeled must have a text column, but {source} has columns "
                f"({', '.join(map(str, frame.columns))}). Name the column 'text' or pass "
                f"--text-column."
            )
        texts = [str(t).strip() for t in frame[column].dropna() if str(t).strip()]
    if not texts:
        raise DataError(f"--unlabeled must hold at least one text, but {source} has none. "
                        f"Give a file with one text per line.")
    return texts
