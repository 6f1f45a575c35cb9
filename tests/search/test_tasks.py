"""Regression and multi-label searches end to end on generated data and the tiny model: tune
a few trials through the command line, load the best model with transformers and with
pretune, predict with the command and with Python, and read the run back (show, report)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, r2_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import pretune

from .helpers import cli, regression_rows, space_file

TOPIC_WORDS = {"sports": ("goal", "match", "team"), "music": ("song", "band", "album"),
               "food": ("pizza", "soup", "bread")}


def multilabel_rows(n: int, seed: int) -> pd.DataFrame:
    """Texts naming 0 to 3 topics by their words; the label list (as JSON text in a CSV) is the
    set of topics named."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        chosen = [t for t in TOPIC_WORDS if rng.random() < 0.45]
        words = [str(rng.choice(TOPIC_WORDS[t])) for t in chosen] + ["the", "news"]
        rng.shuffle(words)
        rows.append((" ".join(words), json.dumps(chosen)))
    return pd.DataFrame(rows, columns=["text", "topics"])


def tune(tmp, model_dir, train, valid, space, *extra):
    out = tmp / "run"
    result = cli("tune", "--model", model_dir, "--train", train, "--valid", valid,
                 "--budget", "3trials", "--out", out, "--space", space_file(tmp / "space.yaml", space),
                 "--fixed", "epochs=3", "--pruner", "none", "--precision", "fp32",
                 "--fixed", "threads=1", "--no-priors", "--no-refit", *extra)  # the search's model
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def regression_run(tiny_learner_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regression")
    train, valid = tmp / "train.csv", tmp / "valid.csv"
    regression_rows(96, 0).to_csv(train, index=False)
    regression_rows(32, 1).to_csv(valid, index=False)
    space = {"extend": False, "lr": {"low": 2e-3, "high": 1e-2, "log": True},
             "loss": {"choices": ["mse", "huber"]}}
    out, result = tune(tmp, tiny_learner_dir, train, valid, space, "--label-column", "price",
                       "--fixed", "batch_size=8", "--fixed", "dropout=0")
    return out, result, valid, tmp


def test_regression_search_predicts_in_the_data_units(regression_run):
    out, result, valid, tmp = regression_run
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert record["metric"] == "r2" and record["direction"] == "maximize"
    assert record["settings"]["data"]["task"] == "regression"
    assert "label_smoothing" not in record["space"] and "loss" in record["space"]
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    task = meta["task"]
    targets = regression_rows(96, 0)["price"]
    assert task["kind"] == "regression" and task["problem_type"] == "regression"
    assert task["target_mean"] == pytest.approx(targets.mean())
    assert task["target_std"] == pytest.approx(targets.std(ddof=0))

    # The command and Python give the same values, in the targets' units, and the recorded
    # validation metrics are those of these predictions.
    cmd = cli("predict", out, "--input", valid, "--output", tmp / "preds.csv")
    assert cmd.exit_code == 0, cmd.output
    written = pd.read_csv(tmp / "preds.csv")
    preds = pretune.predict(out, valid)
    assert list(preds.columns) == ["text", "price", "prediction"]
    assert np.allclose(written["prediction"], preds["prediction"], atol=1e-4)
    truth = pd.read_csv(valid)["price"]
    r2 = r2_score(truth, preds["prediction"])
    assert r2 == pytest.approx(meta["metrics"]["r2"], abs=1e-4)
    assert abs(preds["prediction"].mean() - truth.mean()) < truth.std()  # not standardized units
    # The words' values were learned: a constant (even the validation mean) has R2 <= 0, and
    # these searches reach about 0.9.
    assert r2_score(truth, np.full(len(truth), targets.mean())) <= 0
    assert r2 > 0.6, r2

    # transformers alone: one output, problem_type regression, standardized; undone by hand.
    model = AutoModelForSequenceClassification.from_pretrained(out / "best").eval()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    tokenizer = AutoTokenizer.from_pretrained(out / "best")
    texts = pd.read_csv(valid)["text"].tolist()[:5]
    with torch.no_grad():
        raw = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[:, 0].numpy()
    assert np.allclose(raw * task["target_std"] + task["target_mean"],
                       preds["prediction"][:5], atol=1e-3)


def test_regression_final_assembly_averages_values(regression_run):
    out, _, valid, _ = regression_run
    assembly = yaml.safe_load((out / "plan.yaml").read_text())["assembly"]
    assert [c["kind"] for c in assembly["candidates"]][:2] == ["trial", "ensemble"]
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["task"] == "regression"
    preds = pretune.predict(out, valid, ensemble=True)
    assert list(preds.columns) == ["text", "price", "prediction"]
    truth = pd.read_csv(valid)["price"]
    assert r2_score(truth, preds["prediction"]) == pytest.approx(spec["metrics"]["r2"], abs=1e-4)
    members = [pretune.predict(out / m["path"], valid)["prediction"] * m["weight"]
               for m in spec["members"]]
    total = sum(m["weight"] for m in spec["members"])
    assert np.allclose(sum(members) / total, preds["prediction"], atol=1e-4)


def test_regression_run_reads_back_in_show_and_report(regression_run):
    out, _, _, _ = regression_run
    shown = cli("show", out)
    assert shown.exit_code == 0, shown.output
    assert "r2" in shown.output
    trials = pd.read_csv(out / "trials.csv")
    assert {"valid_r2", "valid_mae", "valid_spearman"} <= set(trials.columns)
    assert "valid_accuracy" not in trials.columns
    pytest.importorskip("plotly")
    done = cli("report", out)
    assert done.exit_code == 0, done.output
    page = (out / "report.html").read_text()
    assert "predicted value" in page and "confusion" not in page.lower().split("<script")[0]


@pytest.fixture(scope="module")
def multilabel_run(tiny_learner_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multilabel")
    train, valid = tmp / "train.csv", tmp / "valid.csv"
    multilabel_rows(144, 0).to_csv(train, index=False)
    multilabel_rows(32, 1).to_csv(valid, index=False)
    space = {"extend": False, "lr": {"low": 2e-3, "high": 5e-3, "log": True},
             "label_smoothing": {"low": 0.0, "high": 0.1}}
    # Without dropout and with a few more steps, the tiny model learns the topics' words.
    out, result = tune(tmp, tiny_learner_dir, train, valid, space, "--metric", "f1_macro",
                       "--label-column", "topics", "--fixed", "epochs=6",
                       "--fixed", "batch_size=8", "--fixed", "dropout=0")
    return out, result, valid, tmp


def test_multilabel_search_predicts_label_sets_at_the_tuned_threshold(multilabel_run):
    out, _, valid, tmp = multilabel_run
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert record["metric"] == "f1_macro" and record["settings"]["data"]["task"] == "multilabel"
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["labels"] == ["food", "music", "sports"]
    threshold = meta["task"]["threshold"]
    assert meta["task"]["kind"] == "multilabel" and 0.05 <= threshold <= 0.95
    assert meta["metrics"]["threshold"] == threshold

    cmd = cli("predict", out, "--input", valid, "--output", tmp / "preds.csv")
    assert cmd.exit_code == 0, cmd.output
    written = pd.read_csv(tmp / "preds.csv")
    preds = pretune.predict(out, valid)
    assert [json.loads(x) for x in written["prediction"]] == list(preds["prediction"])
    probs = preds[["prob_food", "prob_music", "prob_sports"]].to_numpy()
    for row, labels in zip(probs, preds["prediction"]):  # the label set is the threshold's
        assert labels == [n for n, p in zip(["food", "music", "sports"], row) if p >= threshold]
    truth = [json.loads(x) for x in pd.read_csv(valid)["topics"]]
    y = np.array([[n in t for n in ("food", "music", "sports")] for t in truth], dtype=int)
    assert f1_score(y, (probs >= threshold).astype(int), average="macro", zero_division=0) == \
        pytest.approx(meta["metrics"]["f1_macro"], abs=1e-6)
    # The topics were learned: F1 micro well above that of the best constant label set (every
    # label, for topics this common), which a model that learned nothing can reach by its
    # tuned threshold.
    predicted = (probs >= threshold).astype(int)
    constants = [f1_score(y, np.tile(row, (len(y), 1)), average="micro", zero_division=0)
                 for row in itertools.product((0, 1), repeat=3)]
    micro = f1_score(y, predicted, average="micro")
    assert max(constants) < 0.65 and micro > max(constants) + 0.15, (micro, max(constants))

    model = AutoModelForSequenceClassification.from_pretrained(out / "best").eval()
    assert model.config.problem_type == "multi_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(out / "best")
    texts = pd.read_csv(valid)["text"].tolist()[:4]
    with torch.no_grad():
        sig = torch.sigmoid(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    assert np.allclose(sig.numpy(), probs[:4], atol=1e-4)


def test_multilabel_final_assembly_serves_label_sets_at_its_own_threshold(multilabel_run):
    out, _, valid, _ = multilabel_run
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["task"] == "multilabel"
    threshold = spec["metrics"]["threshold"]
    preds = pretune.predict(out, valid, ensemble=True)
    probs = preds[["prob_food", "prob_music", "prob_sports"]].to_numpy()
    for row, labels in zip(probs, preds["prediction"]):
        assert labels == [n for n, p in zip(["food", "music", "sports"], row) if p >= threshold]
    truth = [json.loads(x) for x in pd.read_csv(valid)["topics"]]
    y = np.array([[n in t for n in ("food", "music", "sports")] for t in truth], dtype=int)
    assert f1_score(y, (probs >= threshold).astype(int), average="macro", zero_division=0) == \
        pytest.approx(spec["metrics"]["f1_macro"], abs=1e-6)
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["made_of"]["kind"] in ("trial", "soup", "distilled")


def test_multilabel_run_reads_back_in_show_and_report(multilabel_run):
    out, _, _, _ = multilabel_run
    shown = cli("show", out)
    assert shown.exit_code == 0, shown.output
    trials = pd.read_csv(out / "trials.csv")
    assert {"valid_f1_macro", "valid_subset_accuracy", "valid_threshold"} <= set(trials.columns)
    pytest.importorskip("plotly")
    done = cli("report", out)
    assert done.exit_code == 0, done.output
    page = (out / "report.html").read_text()
    assert "subset accuracy" in page and "<td>music</td>" in page


def test_train_command_reports_the_task_metric(tiny_learner_dir, tmp_path):
    train = tmp_path / "train.csv"
    regression_rows(48, 2).to_csv(train, index=False)
    done = cli("train", "--model", tiny_learner_dir, "--train", train, "--label-column", "price",
               "--out", tmp_path / "model", "--epochs", "1", "--batch-size", "8",
               "--precision", "fp32", "--set", "threads=1")
    assert done.exit_code == 0, done.output
    assert "done: r2 " in done.output and "validation_r2=" in done.output
    refused = cli("train", "--model", tiny_learner_dir, "--train", train, "--label-column", "price",
                  "--out", tmp_path / "m2", "--metric", "accuracy", "--set", "label_smoothing=0.1")
    assert refused.exit_code == 2 and "label_smoothing and class_weights are for classes" in refused.output


def test_a_search_recorded_before_tasks_existed_continues(tmp_path):
    """Its record lacks the task settings: their defaults (and classification) match it."""
    from pretune.config import RunConfig, with_task
    from pretune.errors import ConfigError
    from pretune.search import rundir

    new = with_task(RunConfig(), "classification").to_dict()
    old = {g: dict(v) for g, v in new.items()}
    for group, name in (("data", "task"), ("data", "label_delimiter"),
                        ("data", "standardize_target"), ("train", "loss"),
                        ("train", "huber_delta"), ("train", "threshold")):
        del old[group][name]
    rundir.write_record(tmp_path, {"settings": old, "metric": "accuracy"})
    assert rundir.check_record(tmp_path, {"settings": new, "metric": "accuracy"})
    regression = with_task(RunConfig(), "regression").to_dict()
    with pytest.raises(ConfigError, match="task"):
        rundir.check_record(tmp_path, {"settings": regression, "metric": "accuracy"})
