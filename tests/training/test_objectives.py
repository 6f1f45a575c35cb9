"""Regression and multi-label objectives: losses, outputs, metrics against scikit-learn and
SciPy, threshold tuning, target standardization, and training through the one loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from pretune.config import LOWER_IS_BETTER, RunConfig, TrainConfig, with_task
from pretune.errors import ConfigError
from pretune.training.loop import train
from pretune.training.metrics import (
    THRESHOLDS,
    f1_at_thresholds,
    multilabel_metrics,
    regression_metrics,
    tune_threshold,
)
from pretune.training.objectives import MultiLabel, Regression

from .toy import ToyBatches, separable, tiny_bert


def settings(**kw) -> TrainConfig:
    base = dict(lr=3e-3, epochs=6, batch_size=8, warmup_ratio=0.0, precision="fp32",
                patience=None, evals_per_epoch=1)
    base.update(kw)
    return TrainConfig(**base)


# --- regression --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, reference", [
    ("mse", lambda p, t: torch.mean((p - t) ** 2)),
    ("mae", lambda p, t: torch.mean(torch.abs(p - t))),
    ("huber", lambda p, t: torch.mean(torch.where((p - t).abs() <= 0.5, 0.5 * (p - t) ** 2,
                                                  0.5 * ((p - t).abs() - 0.25)))),
])
def test_regression_losses_are_computed_on_standardized_targets(loss, reference):
    objective = Regression(mean=100.0, std=20.0)
    logits = torch.tensor([[0.3], [-1.0], [2.0], [0.0]])
    y = torch.tensor([110.0, 60.0, 100.0, 150.0])
    fn = objective.loss_fn(settings(loss=loss, huber_delta=0.5), "cpu")
    expected = reference(logits[:, 0], (y - 100.0) / 20.0)
    assert float(fn(logits, y)) == pytest.approx(float(expected), rel=1e-6)


def test_standardization_round_trips_to_the_data_units():
    y = np.array([12.5, 40.0, 33.0, 7.25, 100.0])
    mean, std = float(y.mean()), float(y.std())
    objective = Regression(mean, std)
    standardized = torch.tensor((y - mean) / std, dtype=torch.float32)[:, None]
    assert np.allclose(objective.outputs(standardized).numpy(), y, atol=1e-4)
    assert objective.eval_loss(standardized, torch.tensor(y, dtype=torch.float32)) == \
        pytest.approx(0.0, abs=1e-8)


def test_regression_metrics_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, size=200)
    p = y + rng.normal(0, 5, size=200)
    m = regression_metrics(p, y)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, p))
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))
    assert m["pearson"] == pytest.approx(stats.pearsonr(p, y)[0])
    assert m["spearman"] == pytest.approx(stats.spearmanr(p, y)[0])
    assert math.isnan(regression_metrics(np.full(5, 3.0), y[:5])["pearson"])  # constant


def test_error_metrics_are_minimized():
    assert {"mse", "rmse", "mae", "hamming_loss"} <= set(LOWER_IS_BETTER)
    assert "r2" not in LOWER_IS_BETTER and "spearman" not in LOWER_IS_BETTER


def test_the_loop_trains_a_regression_head_and_reports_in_data_units():
    ids, classes = separable(48)
    y = np.where(classes == 1, 250.0, 150.0) + np.random.default_rng(0).normal(0, 1, 48)
    objective = Regression(float(y.mean()), float(y.std()), "mse")
    result = train(tiny_bert(num_labels=1), ToyBatches(ids, y, 8, shuffle=True),
                   ToyBatches(ids, y, 48), settings(metric="r2", loss="mse"), objective=objective)
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"]
    assert result.best_metrics["r2"] > 0.5
    assert result.best_metrics["mae"] < 50  # in the targets' units (their spread is 100)


# --- multi-label -------------------------------------------------------------------------------


def _multilabel(n=120, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(int)
    y[:, 3] = 0  # a label without positives here
    probs = np.clip(0.6 * y + rng.random((n, k)) * 0.5, 0, 1)
    return probs, y


@pytest.mark.parametrize("average", ["micro", "macro", "samples"])
def test_f1_over_thresholds_matches_scikit_learn(average):
    probs, y = _multilabel()
    ours = f1_at_thresholds(probs, y, THRESHOLDS, average)
    theirs = [skm.f1_score(y, (probs >= t).astype(int), average=average, zero_division=0)
              for t in THRESHOLDS]
    assert np.allclose(ours, theirs)


def test_the_tuned_threshold_is_the_best_of_the_grid():
    probs, y = _multilabel(seed=3)
    for metric in ("f1_micro", "f1_macro"):
        t = tune_threshold(probs, y, metric)
        average = metric.split("_")[1]
        scores = {float(c): skm.f1_score(y, (probs >= c).astype(int), average=average,
                                         zero_division=0) for c in THRESHOLDS}
        assert scores[t] == pytest.approx(max(scores.values()))
    # A tie between every threshold goes to 0.5.
    assert tune_threshold(np.full((4, 2), 0.99), np.ones((4, 2)), "f1_micro") == 0.5


def test_multilabel_metrics_match_scikit_learn_at_the_threshold():
    probs, y = _multilabel()
    m = multilabel_metrics(probs, y, threshold=0.4)
    pred = (probs >= 0.4).astype(int)
    assert m["threshold"] == 0.4
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    auc = np.mean([skm.roc_auc_score(y[:, j], probs[:, j]) for j in range(3)])  # label 3 skipped
    assert m["roc_auc"] == pytest.approx(auc)
    assert m["loss"] == pytest.approx(skm.log_loss(y.ravel(), np.clip(probs.ravel(), 1e-7, 1 - 1e-7)))
    tuned = multilabel_metrics(probs, y, metric="f1_macro")
    assert tuned["threshold"] == tune_threshold(probs, y, "f1_macro")


def test_multilabel_loss_is_binary_cross_entropy_with_smoothing_and_positive_weights():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    plain = MultiLabel().loss_fn(settings(), "cpu")
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(plain(logits, y)) == pytest.approx(float(bce(logits, y)))
    smooth = MultiLabel().loss_fn(settings(label_smoothing=0.2), "cpu")
    assert float(smooth(logits, y)) == pytest.approx(float(bce(logits, y * 0.8 + 0.1)))
    weighted = MultiLabel(positives=np.array([1, 1, 3]), rows=4).loss_fn(
        settings(class_weights="balanced"), "cpu")
    pos_weight = torch.tensor([3.0, 3.0, 1 / 3])
    assert float(weighted(logits, y)) == pytest.approx(
        float(bce(logits, y, pos_weight=pos_weight)))


def test_the_loop_trains_a_multilabel_head():
    ids, classes = separable(48, num_labels=3)
    y = np.stack([classes == 0, classes == 1, classes >= 1], axis=1).astype(np.float32)
    result = train(tiny_bert(num_labels=3), ToyBatches(ids, y, 8, shuffle=True),
                   ToyBatches(ids, y, 48), settings(metric="f1_micro"), objective=MultiLabel())
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_metrics["f1_micro"] > 0.8
    assert 0.05 <= result.best_metrics["threshold"] <= 0.95


# --- settings per task -------------------------------------------------------------------------


def test_the_default_metric_and_loss_follow_the_task():
    assert with_task(RunConfig(), "classification").train.metric == "accuracy"
    assert with_task(RunConfig(), "classification").train.loss == "auto"
    regression = with_task(RunConfig(), "regression")
    assert (regression.train.metric, regression.train.loss) == ("r2", "mse")
    multilabel = with_task(RunConfig(), "multilabel")
    assert (multilabel.train.metric, multilabel.train.loss) == ("f1_micro", "bce")


def test_a_metric_or_loss_of_another_task_is_refused():
    with pytest.raises(ConfigError, match="regression metrics"):
        with_task(RunConfig().with_settings({"metric": "log_loss"}), "regression")
    with pytest.raises(ConfigError, match="loss must be auto or one of the classification"):
        with_task(RunConfig().with_settings({"loss": "huber"}), "classification")
