"""Writing prediction tables: the output formats by extension, list cells (multi-label
predictions) as JSON texts, and label sets from per-label probabilities. Imports no torch, so
that predicting with ONNX Runtime (``pretune.deploy.runtime``) needs none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pretune.outdir import atomic_write


def label_sets(probs: np.ndarray, names: list[str], threshold: float) -> list[list[str]]:
    """Each row's labels whose probability (or 0/1 indicator) is at least ``threshold``."""
    return [[names[j] for j in np.flatnonzero(row >= threshold)] for row in np.asarray(probs)]


_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
                  ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path) -> str:
    from pretune.errors import ConfigError

    kind = _TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"--output must end in .csv, .tsv, .jsonl or .parquet, but got {path.name!r}. "
            f"Choose one of those extensions."
        )
    return kind


def lists_as_json(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with list cells (multi-label predictions) as JSON texts, as a CSV holds them
    and ``load_task`` reads them back; the frame itself when it has none."""
    listed = [c for c in frame.columns[frame.dtypes == object]
              if frame[c].map(lambda v: isinstance(v, list)).any()]
    if not listed:
        return frame
    frame = frame.copy()
    for column in listed:
        frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` in the format its extension names, atomically."""
    kind = table_format(path)
    if kind in ("csv", "tsv"):
        frame = lists_as_json(frame)

    def write(tmp: Path) -> None:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "tsv":
            frame.to_csv(tmp, index=False, sep="\t")
        elif kind == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)

    atomic_write(path, write)
