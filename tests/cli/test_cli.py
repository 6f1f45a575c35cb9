"""The commands as a user runs them: exit codes, one-line errors, outputs on disk."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import SENTIMENT_ROWS, build_tiny_model_dir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": ""}


def pretune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pretune.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def fast(model):
    return ["--model", model, "--epochs", "1", "--batch-size", "8", "--precision", "fp32"]


def test_train_then_predict(tiny_model_dir, sentiment_csv, tmp_path):
    out = tmp_path / "model"
    r = pretune("train", "--train", sentiment_csv, "--out", out, "--set", "lr=1e-3", *fast(tiny_model_dir))
    assert r.returncode == 0, r.stderr
    assert "validation_accuracy=" in r.stdout
    assert (out / "model.safetensors").exists() and (out / "pretune.yaml").exists()
    meta = yaml.safe_load((out / "pretune.yaml").read_text())
    assert meta["settings"]["train"]["lr"] == 1e-3

    r = pretune("predict", out, "--input", sentiment_csv, "--output", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    assert set(preds["prediction"]) <= {"negative", "positive"}
    assert preds[["prob_negative", "prob_positive"]].sum(axis=1).round(5).eq(1).all()


def test_train_from_a_saved_pretune_yaml_reuses_its_settings(tiny_model_dir, sentiment_csv, tmp_path):
    first = tmp_path / "first"
    assert pretune("train", "--train", sentiment_csv, "--out", first, "--set", "label_smoothing=0.05",
                   *fast(tiny_model_dir)).returncode == 0
    second = tmp_path / "second"
    r = pretune("train", "--config", first / "pretune.yaml", "--out", second)
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((second / "pretune.yaml").read_text())
    assert meta["settings"]["train"]["label_smoothing"] == 0.05


def _csv(path: Path, rows, columns=("text", "label")) -> Path:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


BAD_INPUTS = {
    "missing file": (lambda d, m: ["--train", d / "nope.csv", "--model", m], "nope.csv"),
    "unknown extension": (lambda d, m: ["--train", _touch(d / "data.xlsx"), "--model", m], ".xlsx"),
    "empty file": (lambda d, m: ["--train", _touch(d / "empty.csv", "text,label\n"), "--model", m], "empty"),
    "no text column": (lambda d, m: ["--train", _csv(d / "t.csv", [(1, 2, "a")] * 4, ("a", "b", "label")), "--model", m], "--text-column"),
    "no label column": (lambda d, m: ["--train", _csv(d / "t.csv", [("x", "y")] * 4, ("text", "other")), "--model", m], "--label-column"),
    "single class": (lambda d, m: ["--train", _csv(d / "t.csv", [("good", "pos")] * 6), "--model", m], "two"),
    "valid label not in train": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--valid",
                                 _csv(d / "v.csv", [("meh", "neutral"), ("good", "positive")]), "--model", m], "neutral"),
    "empty text": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS + [("", "positive")]), "--model", m], "text"),
    "model path missing": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model", d / "no-model"], "does not exist"),
    "pickle-only checkpoint": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model",
                               build_tiny_model_dir(d / "pkl", safetensors=False)], "--allow-pickle"),
    "unknown optimizer": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model", m, "--optimizer", "lion"], "adamw"),
    "unknown schedule": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model", m, "--schedule", "zigzag"], "cosine"),
    "bad number": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model", m, "--set", "lr=fast"], "lr"),
    "unknown setting": (lambda d, m: ["--train", _csv(d / "t.csv", SENTIMENT_ROWS), "--model", m, "--set", "learning_rate=1"], "learning_rate"),
    "missing config": (lambda d, m: ["--config", d / "nope.yaml", "--model", m], "nope.yaml"),
}


def _touch(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_exit_code_2(case, tiny_model_dir, tmp_path):
    make, expected = BAD_INPUTS[case]
    args = make(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    r = pretune("train", *args, "--out", out, "--epochs", "1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and "Traceback" not in r.stderr
    assert expected in lines[0], lines[0]
    assert not out.exists()


def test_predict_refuses_a_missing_model_directory(tmp_path, sentiment_csv):
    r = pretune("predict", tmp_path / "nothing", "--input", sentiment_csv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"model path {tmp_path / 'nothing'} does not exist" in lines[0], lines[0]
    assert lines[0].endswith("Pass a saved model directory or a run directory (one that holds best/).")


def test_a_run_that_diverges_before_any_evaluation_is_an_error(tiny_model_dir, sentiment_csv, tmp_path):
    # Any gradient norm counts as exploding here, so the very first step stops the run.
    r = pretune("train", "--train", sentiment_csv, "--out", tmp_path / "m",
                "--set", "grad_norm_max=1e-12", *fast(tiny_model_dir))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "exploding gradient" in r.stderr and "--lr" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_max_length_above_the_model_limit_is_capped(tiny_model_dir, tmp_path):
    long_rows = [(" ".join(["great"] * 300), "pos"), (" ".join(["awful"] * 300), "neg")] * 4
    data = _csv(tmp_path / "long.csv", long_rows)
    r = pretune("train", "--train", data, "--out", tmp_path / "m", "--max-length", "1000",
                "--set", "valid_fraction=0.25", *fast(tiny_model_dir))
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((tmp_path / "m" / "pretune.yaml").read_text())
    assert meta["settings"]["data"]["max_length"] == 128  # the tiny model's positions


def test_retraining_from_a_saved_config_uses_the_same_split(tiny_model_dir, sentiment_csv, tmp_path):
    first = tmp_path / "first"
    assert pretune("train", "--train", sentiment_csv, "--out", first, "--seed", "5",
                   *fast(tiny_model_dir)).returncode == 0
    second = tmp_path / "second"
    r = pretune("train", "--config", first / "pretune.yaml", "--out", second, "--seed", "9")
    assert r.returncode == 0, r.stderr
    a = yaml.safe_load((first / "pretune.yaml").read_text())
    b = yaml.safe_load((second / "pretune.yaml").read_text())
    assert a["data"]["fingerprint"] == b["data"]["fingerprint"]
    assert b["settings"]["train"]["seed"] == 9
