"""Parameter groups: weight decay by kind, and layer-wise learning-rate decay by depth."""

import pytest
import torch

from pretune.config import RunConfig, TrainConfig, validate
from pretune.errors import ConfigError
from pretune.training.optimizers import build_optimizer, layer_depths
from pretune.training.schedules import build_schedule

from .toy import tiny_bert


def rates(optimizer, model):
    """Each parameter's learning rate, by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_gives_the_head_lr_and_each_layer_below_a_factor_less():
    model = tiny_bert()  # 2 layers: embeddings d^3, layer 0 d^2, layer 1 d, pooler and head 1
    lr, d = 1e-3, 0.5
    got = rates(build_optimizer(model, TrainConfig(lr=lr, layer_decay=d)), model)
    assert len(got) == sum(1 for _ in model.parameters())
    for name, rate in got.items():
        if name.startswith("classifier.") or name.startswith("bert.pooler."):
            expected = lr
        elif name.startswith("bert.encoder.layer.1."):
            expected = lr * d
        elif name.startswith("bert.encoder.layer.0."):
            expected = lr * d**2
        else:
            assert name.startswith("bert.embeddings."), name
            expected = lr * d**3
        assert rate == pytest.approx(expected), name


def test_layer_decay_keeps_weight_decay_off_biases_and_norms():
    model = tiny_bert()
    optimizer = build_optimizer(model, TrainConfig(layer_decay=0.8, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        spared = {names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
                  for p in group["params"]}
        assert spared == {group["weight_decay"] == 0.0}


def test_no_layer_decay_gives_one_rate_to_all():
    model = tiny_bert()
    optimizer = build_optimizer(model, TrainConfig(lr=3e-4))
    assert set(rates(optimizer, model).values()) == {3e-4}
    assert len(optimizer.param_groups) == 2  # decayed and spared, as without layer decay


def test_the_schedule_scales_every_group_alike():
    model = tiny_bert()
    settings = TrainConfig(lr=1e-3, layer_decay=0.5, schedule="linear", warmup_ratio=0.0)
    optimizer = build_optimizer(model, settings)
    start = [g["lr"] for g in optimizer.param_groups]
    scheduler = build_schedule(optimizer, settings, total_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    now = [g["lr"] for g in optimizer.param_groups]
    assert now == pytest.approx([0.6 * s for s in start])
    assert len(set(start)) == 4  # the head, two layers, the embeddings


def test_frozen_layers_are_left_out_whatever_the_decay():
    model = tiny_bert()
    for p in model.bert.parameters():
        p.requires_grad_(False)
    got = rates(build_optimizer(model, TrainConfig(lr=1e-3, layer_decay=0.7)), model)
    assert set(got) == {"classifier.weight", "classifier.bias"}
    assert set(got.values()) == {1e-3}


def test_depths_come_from_the_names_of_other_architectures():
    from tests.models.helpers import tiny

    depths = layer_depths(tiny("gpt2"))
    assert depths["transformer.wte.weight"] == 0
    assert depths["transformer.h.0.attn.c_attn.weight"] == 1
    assert depths["transformer.h.1.mlp.c_fc.weight"] == 2
    assert depths["transformer.ln_f.weight"] == depths["score.weight"] == 3


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_layer_decay_must_be_in_zero_one(value):
    with pytest.raises(ConfigError, match=r"layer_decay must be in \(0.0, 1.0\]"):
        validate(RunConfig().with_settings({"layer_decay": value}))


def test_lora_adapters_train_at_lr_whatever_the_decay():
    from pretune.config import ModelConfig
    from pretune.models.lora import apply_lora

    model = apply_lora(tiny_bert(), ModelConfig(model="x", transfer="lora", lora_r=2))
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, layer_decay=0.5))
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_takes_the_fused_update_and_it_equals_the_per_parameter_one(name, monkeypatch):
    from pretune.training import optimizers

    def trained(fused: bool) -> torch.nn.Module:
        monkeypatch.setattr(optimizers, "FUSED", fused)
        model = tiny_bert()
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.1))
        assert bool(optimizer.defaults["fused"]) is fused
        for step in range(3):  # the same made-up gradients for both
            generator = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        return model

    fused, plain = trained(True), trained(False)
    for (n, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(p, q, atol=1e-5), n
