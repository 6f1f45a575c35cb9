"""Token classification: seqeval entity metrics, the loss over tagged tokens, padded outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretune.config import TrainConfig
from pretune.training.loop import predict_proba
from pretune.training.metrics import entity_confusion, tag_sequences, token_metrics
from pretune.training.objectives import TokenClassification

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def one_hot(ids, k=len(NAMES)):
    return np.eye(k, dtype=np.float32)[np.asarray(ids)]


def test_entity_scores_are_strict_and_micro_averaged():
    # sentence 1: PER (0-1) right, LOC (3) right; sentence 2: PER predicted one word short
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 1, 2, 0, -100, -100]])
    preds = np.array([[0, 1, 2, 0, 3, 0], [0, 1, 0, 0, 0, 0]])
    m = token_metrics(one_hot(preds), labels, NAMES, "IOB2", loss=0.5)
    assert m["entity_precision"] == pytest.approx(2 / 3)  # 3 predicted, 2 right
    assert m["entity_recall"] == pytest.approx(2 / 3)  # 3 true, 2 found
    assert m["entity_f1"] == pytest.approx(2 / 3)
    assert m["token_accuracy"] == pytest.approx(6 / 7)  # -100 positions are not words
    assert m["loss"] == 0.5


def test_strict_mode_does_not_count_an_entity_started_by_i():
    labels = np.array([[1, 2, 0]])
    preds = np.array([[2, 2, 0]])  # I-PER I-PER: no valid IOB2 entity
    assert token_metrics(one_hot(preds), labels, NAMES)["entity_f1"] == 0.0


def test_tag_sequences_skip_ignored_positions():
    true, pred = tag_sequences(one_hot([[0, 3, 0]]), np.array([[-100, 3, -100]]), NAMES)
    assert true == [["B-LOC"]] and pred == [["B-LOC"]]


def test_entity_confusion_counts_spans():
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-LOC", "I-LOC", "O", "O"]]
    rows, cols, counts = entity_confusion(true, pred)
    assert rows == cols == ["LOC", "PER", "none"]
    table = {(r, c): counts[i][j] for i, r in enumerate(rows) for j, c in enumerate(cols)}
    assert table[("PER", "LOC")] == 1 and table[("LOC", "none")] == 1
    assert sum(map(sum, counts)) == 2


def test_loss_ignores_untagged_tokens():
    objective = TokenClassification(NAMES)
    loss_fn = objective.loss_fn(TrainConfig(), "cpu")
    logits = torch.randn(2, 4, len(NAMES))
    labels = torch.tensor([[-100, 1, -100, 0], [-100, 3, 4, -100]])
    tagged = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[tagged], labels[tagged])
    assert float(loss_fn(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    changed = logits.clone()
    changed[~tagged] += 5.0  # outputs at ignored positions do not count
    assert float(loss_fn(changed, labels)) == pytest.approx(float(expected), rel=1e-6)


def test_balanced_class_weights_lower_the_weight_of_o():
    counts = np.array([90, 5, 5])
    objective = TokenClassification(["O", "B-X", "I-X"], tag_counts=counts)
    loss_fn = objective.loss_fn(TrainConfig(class_weights="balanced"), "cpu")
    logits = torch.zeros(1, 2, 3)
    only_o = float(loss_fn(logits, torch.tensor([[0, -100]])))
    only_b = float(loss_fn(logits, torch.tensor([[1, -100]])))
    assert only_o == pytest.approx(only_b)  # a weighted mean of one token is its loss
    both = float(loss_fn(logits, torch.tensor([[0, 1]])))
    assert both == pytest.approx(math.log(3))


class _Tagger(torch.nn.Module):
    """Logits (batch, tokens, 2) from input ids: tag 1 where the id is odd."""

    def forward(self, input_ids, attention_mask=None):
        odd = (input_ids % 2).float()
        return type("Out", (), {"logits": torch.stack([1 - odd, odd], dim=-1) * 5})()


def test_predict_proba_pads_batches_of_different_widths():
    from pretune.data.collate import Batches
    from pretune.data.tokenize import Encoded

    ids = [[2, 3], [5, 4, 7, 9], [1]]
    labels = np.empty(3, dtype=object)
    for i, row in enumerate(ids):
        labels[i] = np.array([x % 2 for x in row])
    batches = Batches(Encoded(ids, None, labels), 1, pad_id=0, shuffle=False)
    probs, y, _ = predict_proba(_Tagger(), batches, device=torch.device("cpu"),
                                objective=TokenClassification(["O", "B-X"]))
    assert probs.shape == (3, 4, 2) and y.shape == (3, 4)
    assert y[2].tolist() == [1, -100, -100, -100]  # padding is ignored, in input order
    m = TokenClassification(["O", "B-X"]).metrics(probs, y, None)
    assert m["token_accuracy"] == 1.0
