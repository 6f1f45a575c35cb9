"""The learning-rate range test on a tiny model."""

from __future__ import annotations

import math

import torch

from pretune.config import RunConfig, TrainConfig
from pretune.training.lr_range import MAX_LR, MIN_LR, RangeTest, lr_range_test, range_test

from .toy import ToyBatches, separable, tiny_bert


def settings(**kw) -> TrainConfig:
    return TrainConfig(**{"precision": "fp32", "threads": 1, "batch_size": 8, **kw})


def test_the_sweep_suggests_a_finite_rate_and_leaves_the_weights_as_they_were():
    model = tiny_bert()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, labels = separable(64)
    found = lr_range_test(model, ToyBatches(ids, labels, 8, shuffle=True), settings(), steps=40)

    assert found.steps >= 8
    assert found.suggested is not None and math.isfinite(found.suggested)
    assert MIN_LR / 10 <= found.suggested <= MAX_LR
    assert found.suggested == found.lr_at_min / 10
    # The learning rate grows every step, and the lowest loss is where the suggestion says.
    assert all(b > a for a, b in zip(found.lrs, found.lrs[1:]))
    assert found.lr_at_min == found.lrs[found.losses.index(min(found.losses))]
    assert found.seconds_per_example is not None and found.seconds_per_example > 0
    # The model is exactly as it was, in the mode it was in.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_a_sweep_into_divergence_stops_early_and_still_restores_the_weights():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, labels = separable(64)
    found = lr_range_test(model, ToyBatches(ids, labels, 8, shuffle=True),
                          settings(optimizer="sgd", max_grad_norm=None), min_lr=1.0,
                          max_lr=1e6, steps=50)
    assert found.stop_reason == "diverged" and found.steps < 50
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_result_round_trips_through_a_plain_mapping():
    found = RangeTest(lrs=[1e-5, 1e-4], losses=[0.7, 0.6], lr_at_min=1e-4, suggested=1e-5, steps=2)
    assert RangeTest.from_dict(found.to_dict()) == found


def test_range_test_builds_the_run_as_training_does(tiny_model_dir, sentiment_csv):
    from pretune.data.task import load_task

    config = RunConfig().with_settings({"model": tiny_model_dir, "train": str(sentiment_csv),
                                        "precision": "fp32", "threads": 1, "batch_size": 4})
    found = range_test(config, load_task(config.data, 0), steps=12)
    assert found.steps == 12 and found.batch_size == 4
    assert found.suggested is not None


def test_a_sweep_out_of_time_times_a_step_but_suggests_nothing():
    model = tiny_bert()
    ids, labels = separable(64)
    found = lr_range_test(model, ToyBatches(ids, labels, 8), settings(), steps=40,
                          max_seconds=0.0)
    assert found.stop_reason == "time" and found.steps == 1
    assert found.suggested is None and found.seconds_per_example > 0
