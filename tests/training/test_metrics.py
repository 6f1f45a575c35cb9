import math

import numpy as np
import pytest

from pretune.config import METRICS
from pretune.training.metrics import classification_metrics, is_better


def test_perfect_and_wrong_predictions():
    labels = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[labels] * 0.98 + 0.01
    m = classification_metrics(perfect, labels)
    assert set(m) == set(METRICS)
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["roc_auc"] == 1.0
    wrong = classification_metrics(1 - perfect, labels)
    assert wrong["accuracy"] == 0.0 and wrong["roc_auc"] == 0.0 and wrong["log_loss"] > m["log_loss"]


def test_macro_and_micro_f1_differ_on_imbalance():
    labels = np.array([0] * 8 + [1] * 2)
    preds = np.array([0] * 10)
    m = classification_metrics(np.eye(2)[preds], labels)
    assert m["f1_micro"] == pytest.approx(0.8)
    assert m["f1_macro"] == pytest.approx((2 * 0.8 / 1.8) / 2)
    assert m["recall"] == pytest.approx(0.5)


def test_multiclass_roc_auc_is_one_vs_rest():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet([1, 1, 1], size=60)
    probs[np.arange(60), labels] += 2.0
    probs /= probs.sum(1, keepdims=True)
    assert classification_metrics(probs, labels)["roc_auc"] == 1.0


def test_roc_auc_is_nan_with_one_class_present():
    m = classification_metrics(np.array([[0.3, 0.7], [0.4, 0.6]]), np.array([1, 1]))
    assert math.isnan(m["roc_auc"])


def test_is_better_follows_the_metric_direction():
    assert is_better(0.8, 0.7, "accuracy") and not is_better(0.7, 0.8, "accuracy")
    assert is_better(0.2, 0.3, "log_loss") and not is_better(0.3, 0.2, "loss")
    assert not is_better(0.705, 0.7, "accuracy", min_delta=0.01)
    assert is_better(0.5, None, "accuracy") and not is_better(float("nan"), 0.1, "accuracy")
