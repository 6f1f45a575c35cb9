"""Tiny trained models of every task and head pretune saves, for the deploy tests: one short
training run each on the tiny models of tests/conftest.py, on generated data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

import pretune
from tests.conftest import SENTIMENT_ROWS

ROOT = Path(__file__).resolve().parents[2]


def export_cli(model_dir, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """``pretune export MODEL --format onnx --output OUT --quantize int8`` in a child process
    with a bare environment, and that environment (for the predict runs that follow)."""
    env = {"HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": "", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pretune.cli.main", "export", model_dir,
                        "--format", "onnx", "--output", out, "--quantize", "int8"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    return r, env


FAST = {"epochs": 1, "batch_size": 8, "precision": "fp32", "threads": 1, "lr": 1e-3}

PAIR_ROWS = [("is it good ?", "a wonderful film", "yes"), ("is it good ?", "a dull mess", "no"),
             ("was it fun ?", "great acting", "yes"), ("was it fun ?", "a painful waste", "no")]


def _sentiment(root: Path) -> dict:
    train = root / "train.csv"
    pd.DataFrame(SENTIMENT_ROWS * 3, columns=["text", "label"]).to_csv(train, index=False)
    return {"train": str(train)}


def _pair(root: Path) -> dict:
    train = root / "pairs.csv"
    pd.DataFrame(PAIR_ROWS * 8, columns=["question", "answer", "label"]).to_csv(train, index=False)
    return {"train": str(train), "text_column": "question", "text_pair_column": "answer"}


def _regression(root: Path) -> dict:
    from tests.search.helpers import regression_rows

    train = root / "prices.csv"
    regression_rows(40, 0).to_csv(train, index=False)
    return {"train": str(train), "label_column": "price"}


def _multilabel(root: Path) -> dict:
    rows = [("goal and match", ["sports"]), ("song by the band", ["music"]),
            ("the team sang a song", ["sports", "music"]), ("the news", [])]
    train = root / "topics.csv"
    pd.DataFrame([(t, json.dumps(y)) for t, y in rows * 8],
                 columns=["text", "topics"]).to_csv(train, index=False)
    return {"train": str(train), "label_column": "topics"}


def _images(root: Path) -> dict:
    from tests.image_helpers import write_square_folder

    return {"train": str(write_square_folder(root / "squares", per_class=8))}


CASES = {
    # name: (data, settings); the text cases train the tiny BERT, "image" the tiny ViT
    "linear": (_sentiment, {}),
    "mlp-mean-layernorm": (_sentiment, {"head_layers": 1, "pooling": "mean", "head_norm": "layer"}),
    "mlp-max-batchnorm": (_sentiment, {"head_layers": 2, "head_width": 16, "pooling": "max",
                                       "head_norm": "batch"}),
    "cls-pooling": (_sentiment, {"pooling": "cls"}),
    "pair": (_pair, {}),
    "regression": (_regression, {}),
    "multilabel": (_multilabel, {}),
    "image": (_images, {}),
    # other encoders (the MiniLM tokenizer; DistilBERT takes no token type ids)
    "distilbert-mlp": (_sentiment, {"head_layers": 1}),
    "roberta": (_sentiment, {}),
}


def build_encoder_dir(arch: str, path: Path) -> Path:
    """A 2-layer DistilBERT or RoBERTa of width 32 with the MiniLM tokenizer, saved to ``path``."""
    import torch
    from transformers import (AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification,
                              RobertaConfig, RobertaForSequenceClassification)

    from tests.conftest import minilm_dir

    torch.manual_seed(0)
    if arch == "distilbert":
        model = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=128, initializer_range=0.2))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=130, pad_token_id=0, initializer_range=0.2))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def train_case(name: str, root: Path, text_model: str, image_model: str) -> Path:
    """Train the case ``name`` under ``root``; return its model directory."""
    data, settings = CASES[name]
    root.mkdir(parents=True, exist_ok=True)
    out = root / "model"
    model = image_model if name == "image" else text_model
    if name.split("-")[0] in ("distilbert", "roberta"):
        model = str(build_encoder_dir(name.split("-")[0], root / "base"))
    pretune.train(model=model, out=out, **data(root), **FAST, **settings)
    return out
