"""Every registered optimizer and schedule through the same checks on a separable toy task."""

import pytest
import torch

from pretune.config import OPTIMIZERS, SCHEDULES, TrainConfig
from pretune.training.loop import evaluate_model, train
from pretune.training.optimizers import REGISTRY as OPTIMIZER_REGISTRY
from pretune.training.schedules import REGISTRY as SCHEDULE_REGISTRY

from .toy import ToyBatches, separable, tiny_bert

# A learning rate that suits each optimizer family on the toy task.
TOY_LR = {"sgd": 0.3, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.01, "rmsprop": 1e-3,
          "adam": 3e-3, "adamw": 3e-3}


def run(model, **kw):
    ids, labels = separable(48)
    base = dict(precision="fp32", epochs=4, batch_size=16, metric="loss", patience=None, threads=1,
                warmup_ratio=0.1)
    base.update(kw)
    valid = ToyBatches(ids, labels, 48)
    before = evaluate_model(model, valid)["loss"]
    result = train(model, ToyBatches(ids, labels, 16, shuffle=True), valid, TrainConfig(**base))
    return before, result


def test_every_configured_name_is_registered():
    assert set(OPTIMIZER_REGISTRY) == set(OPTIMIZERS)
    assert set(SCHEDULE_REGISTRY) == set(SCHEDULES)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_lowers_the_loss(name):
    model = tiny_bert()
    before, result = run(model, optimizer=name, lr=TOY_LR[name])
    assert result.best_metrics["loss"] < before * 0.9, (before, result.best_metrics["loss"])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_lowers_the_loss(schedule):
    before, result = run(tiny_bert(), optimizer="adamw", lr=3e-3, schedule=schedule, min_lr_ratio=0.05)
    assert result.best_metrics["loss"] < before * 0.9


def test_weight_decay_spares_biases_and_layer_norms():
    from pretune.training.optimizers import parameter_groups

    model = tiny_bert()
    decayed, spared = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decayed["params"])
    assert any("LayerNorm" in names[id(p)] for p in spared["params"])
    assert spared["weight_decay"] == 0.0


def test_frozen_parameters_are_not_given_to_the_optimizer_and_do_not_move():
    model = tiny_bert()
    for p in model.bert.parameters():
        p.requires_grad = False
    frozen = {n: p.detach().clone() for n, p in model.bert.named_parameters()}
    before, result = run(model, optimizer="adamw", lr=1e-2, weight_decay=0.1)
    assert result.best_metrics["loss"] < before
    for n, p in model.bert.named_parameters():
        assert torch.equal(p, frozen[n]), n
