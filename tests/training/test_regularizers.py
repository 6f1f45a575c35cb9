import pytest
import torch

from pretune.config import TrainConfig
from pretune.training.loop import train
from pretune.training.regularizers import penalized_weights, penalty

from .toy import ToyBatches, separable, tiny_bert


def test_penalties_match_their_formulas():
    w = [torch.tensor([[1.0, -2.0], [3.0, 0.0]])]
    assert penalty(w, TrainConfig(penalty="l1", penalty_alpha=0.1)).item() == pytest.approx(0.6)
    assert penalty(w, TrainConfig(penalty="l2", penalty_alpha=0.1)).item() == pytest.approx(0.7)
    en = penalty(w, TrainConfig(penalty="elasticnet", penalty_alpha=0.1, l1_ratio=0.25)).item()
    assert en == pytest.approx(0.1 * (0.25 * 6 + 0.75 * 7))
    assert penalty(w, TrainConfig(penalty="none")) is None


def test_penalty_skips_biases_norms_and_frozen_weights():
    model = tiny_bert()
    model.bert.embeddings.word_embeddings.weight.requires_grad = False
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = [names[id(p)] for p in penalized_weights(model)]
    assert chosen and all("bias" not in n and "LayerNorm" not in n for n in chosen)
    assert "bert.embeddings.word_embeddings.weight" not in chosen


def test_strong_l1_shrinks_weights_more_than_no_penalty():
    ids, labels = separable(32)
    norms = {}
    for kind in ("none", "l1"):
        model = tiny_bert()
        train(model, ToyBatches(ids, labels, 16), ToyBatches(ids, labels, 32),
              TrainConfig(optimizer="sgd", lr=0.05, penalty=kind, penalty_alpha=1e-3, epochs=3,
                          precision="fp32", patience=None, schedule="constant", metric="loss"))
        norms[kind] = sum(p.abs().sum().item() for p in penalized_weights(model))
    assert norms["l1"] < norms["none"]
