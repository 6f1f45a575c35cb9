"""Shared pieces of the search tests: data files, a narrow space the tiny model learns in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.conftest import SENTIMENT_ROWS

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": ""}

# The tiny model learns the toy data only at high learning rates.
NARROW = {
    "extend": False,
    "lr": {"low": 3e-3, "high": 3e-2, "log": True},
    "batch_size": {"choices": [8, 16]},
}


def data_files(directory: Path) -> tuple[Path, Path]:
    """train.csv (48 rows) and valid.csv (the 12 distinct rows) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    train, valid = directory / "train.csv", directory / "valid.csv"
    pd.DataFrame(SENTIMENT_ROWS * 4, columns=["text", "label"]).to_csv(train, index=False)
    pd.DataFrame(SENTIMENT_ROWS, columns=["text", "label"]).to_csv(valid, index=False)
    return train, valid


def space_file(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def pretune_subprocess(*args, stdout_file) -> subprocess.Popen:
    """Start `pretune ARGS` in another process, its output going to ``stdout_file``."""
    return subprocess.Popen([sys.executable, "-m", "pretune.cli.main", *map(str, args)],
                            stdout=stdout_file, stderr=subprocess.STDOUT, text=True, env=ENV)


def cli(*args):
    """Run the `pretune` command in this process; returns click's Result."""
    from typer.testing import CliRunner

    from pretune.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


WORD_VALUES = {"superb": 2, "good": 1, "plain": 0, "poor": -1, "dreadful": -2}



def regression_rows(n: int, seed: int) -> pd.DataFrame:
    """Three-word texts whose target is 50 + 10 x the words' values (+ a little noise): a scale
    far from 0 and 1, so predictions in standardized units would show."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = rng.choice(list(WORD_VALUES), size=3)
        rows.append((" ".join(words), 50 + 10 * sum(WORD_VALUES[w] for w in words)
                     + rng.normal(0, 0.5)))
    return pd.DataFrame(rows, columns=["text", "price"])
