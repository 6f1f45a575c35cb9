"""apply_head: finding the final layer, re-initializing it, replacing it by an MLP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretune.config import HEAD_INITS, ModelConfig
from pretune.models.heads import (
    apply_head,
    find_head,
    head_module_names,
    head_parameter_names,
    init_linear,
)
from pretune.models.load import load_pretrained
from pretune.models.mlp_head import MLPHead, TokenBatchNorm

from .helpers import checkpoint, logits, tiny


def _load(tiny_model_dir, **settings):
    cfg = ModelConfig(model=tiny_model_dir, **settings)
    model, tokenizer = load_pretrained(cfg, 2, ["neg", "pos"])
    apply_head(model, cfg)
    return model, tokenizer


@pytest.mark.parametrize(
    "arch, path", [("roberta", "classifier.out_proj"), ("distilbert", "classifier"),
                   ("gpt2", "score"), ("llama", "score")]
)
def test_the_final_layer_is_found_in_every_architecture(arch, path):
    model = tiny(arch, num_labels=3)
    name, layer = find_head(model)
    assert name == path
    assert isinstance(layer, nn.Linear) and layer.out_features == 3


def test_head_names_are_the_modules_outside_the_body(tiny_model_dir):
    model, _ = _load(tiny_model_dir)
    assert head_module_names(model) == ["dropout", "classifier"]
    assert head_parameter_names(model) == ["classifier.weight", "classifier.bias"]
    assert head_parameter_names(tiny("distilbert")) == [
        "pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("head_init", HEAD_INITS)
def test_a_linear_head_is_initialized_as_asked(tiny_model_dir, head_init):
    model, tokenizer = _load(tiny_model_dir, head_init=head_init)
    weight, bias = model.classifier.weight, model.classifier.bias
    saved = checkpoint(tiny_model_dir)["classifier.weight"]

    assert isinstance(model.classifier, nn.Linear) and weight.shape == (2, 32)
    if head_init == "pretrained":
        assert torch.equal(weight, saved)
        return
    assert torch.all(bias == 0)
    assert not torch.equal(weight, saved)
    expected_std = {"zeros": 0.0, "normal": 0.02, "xavier": math.sqrt(2 / 34), "he": math.sqrt(2 / 32)}
    if head_init == "zeros":
        assert torch.all(weight == 0)
    else:  # 64 weights: the sample std is within ~20% of the rule's
        assert 0.6 < weight.std().item() / expected_std[head_init] < 1.4
    assert logits(model, tokenizer).shape == (2, 2)


@pytest.mark.parametrize("how, std", [("xavier", math.sqrt(2 / (256 + 128))),
                                      ("he", math.sqrt(2 / 256)), ("normal", 0.02)])
def test_init_rules_have_their_standard_deviation(how, std):
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    init_linear(linear, how)
    assert abs(linear.weight.std().item() / std - 1) < 0.05
    assert abs(linear.weight.mean().item()) < 0.1 * std
    assert torch.all(linear.bias == 0)
    if how == "xavier":  # uniform: bounded by sqrt(6 / (fan_in + fan_out))
        assert linear.weight.abs().max().item() <= math.sqrt(6 / 384)


@pytest.mark.parametrize("head_init", HEAD_INITS)
def test_an_mlp_head_replaces_the_final_layer(tiny_model_dir, head_init):
    model, tokenizer = _load(tiny_model_dir, head_layers=1, head_init=head_init)
    head = model.classifier

    assert isinstance(head, MLPHead)
    assert [type(m) for m in head] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    hidden, out = head[0], head[3]
    assert hidden.weight.shape == (32, 32) and out.weight.shape == (2, 32)
    assert torch.all(hidden.bias == 0) and torch.all(out.bias == 0)
    if head_init == "zeros":  # the output layer is zero; the hidden one is not, or nothing learns
        assert torch.all(out.weight == 0)
        assert 0.01 < hidden.weight.std().item() < 0.03
    elif head_init in ("pretrained", "normal"):  # transformers' own init: N(0, 0.02)
        for linear in (hidden, out):
            assert 0.01 < linear.weight.std().item() < 0.03
    else:
        expected = math.sqrt(2 / 64) if head_init == "xavier" else math.sqrt(2 / 32)
        assert 0.8 < hidden.weight.std().item() / expected < 1.2
    assert logits(model, tokenizer).shape == (2, 2)


def test_mlp_width_norm_activation_and_dropout_are_configurable(tiny_model_dir):
    model, _ = _load(tiny_model_dir, head_layers=2, head_width=16, head_norm="layer",
                     head_activation="tanh", head_dropout=0.25)
    assert [type(m) for m in model.classifier] == [
        nn.Linear, nn.LayerNorm, nn.Tanh, nn.Dropout,
        nn.Linear, nn.LayerNorm, nn.Tanh, nn.Dropout, nn.Linear]
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [16, 16, 2]
    assert model.classifier[3].p == 0.25
    assert model.config.pretune_head == {
        "path": "classifier", "in_features": 32, "num_labels": 2, "layers": 2, "width": 16,
        "activation": "tanh", "norm": "layer", "dropout": 0.25}

    for activation, cls in [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU)]:
        model, _ = _load(tiny_model_dir, head_layers=3, head_norm="batch", head_activation=activation)
        kinds = [type(m) for m in model.classifier]
        assert kinds.count(cls) == 3 and kinds.count(TokenBatchNorm) == 3
        assert kinds.count(nn.Linear) == 4


def test_a_zero_initialized_mlp_head_still_learns(tiny_model_dir):
    model, tokenizer = _load(tiny_model_dir, head_layers=1, head_init="zeros")
    model.train()
    batch = tokenizer(["good", "bad"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    assert model.classifier[-1].weight.grad.abs().sum() > 0


def test_batch_norm_head_works_on_token_level_heads():
    model = tiny("gpt2", num_labels=3)
    apply_head(model, ModelConfig(head_layers=1, head_norm="batch"))
    model.train()
    ids = torch.randint(1, 100, (2, 5))
    out = model(input_ids=ids, labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert out.logits.shape == (2, 3)
    assert model.score[1].running_mean.abs().sum() > 0  # statistics over the feature dimension


def test_token_batch_norm_normalizes_the_last_dimension():
    norm = TokenBatchNorm(8)
    x = torch.randn(4, 5, 8) * 3 + 1
    y = norm(x)
    assert y.shape == x.shape
    flat = y.reshape(-1, 8)
    assert torch.allclose(flat.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(flat.std(0, unbiased=False), torch.ones(8), atol=1e-3)


def test_a_roberta_mlp_head_replaces_only_the_output_projection():
    model = tiny("roberta", num_labels=3)
    apply_head(model, ModelConfig(head_layers=1, head_width=8))
    assert isinstance(model.classifier.dense, nn.Linear)
    assert isinstance(model.classifier.out_proj, MLPHead)
    assert model.classifier.out_proj[0].in_features == 16
    assert model(input_ids=torch.randint(3, 100, (2, 6))).logits.shape == (2, 3)


def test_apply_head_runs_once(tiny_model_dir):
    model, _ = _load(tiny_model_dir, head_layers=1)
    with pytest.raises(ValueError, match="already an MLP"):
        apply_head(model, ModelConfig(head_layers=1))
