"""apply_transfer: which parameters train, and re-initializing the top layers."""

from __future__ import annotations

import logging

import pytest
import torch

from pretune.config import ModelConfig
from pretune.models.heads import apply_head, head_parameter_names
from pretune.models.load import load_pretrained
from pretune.models.transfer import apply_transfer, find_embeddings, find_layers

from .helpers import tiny


def _load(tiny_model_dir, **settings):
    cfg = ModelConfig(model=tiny_model_dir, **settings)
    model, _ = load_pretrained(cfg, 2, ["neg", "pos"])
    apply_head(model, cfg)
    return model, apply_transfer(model, cfg)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(tiny_model_dir):
    model, summary = _load(tiny_model_dir, transfer="full")
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert summary["trainable_params"] == summary["total_params"] == sum(
        p.numel() for p in model.parameters())
    assert summary["frozen_layers"] == 0 and summary["layers"] == 2


@pytest.mark.parametrize("head_layers", [0, 2])
def test_linear_probe_trains_only_the_head(tiny_model_dir, head_layers):
    model, summary = _load(tiny_model_dir, transfer="linear_probe", head_layers=head_layers)
    assert _trainable(model) == set(head_parameter_names(model))
    assert all(n.startswith("classifier.") for n in _trainable(model))
    assert summary["trainable_params"] == sum(p.numel() for p in model.classifier.parameters())
    assert summary["frozen_layers"] == 2 and summary["embeddings_frozen"]


def test_freeze_bottom_freezes_the_embeddings_and_the_bottom_layers(tiny_model_dir):
    model, summary = _load(tiny_model_dir, transfer="freeze_bottom", freeze_layers=1)
    frozen = {n for n, _ in model.named_parameters()} - _trainable(model)
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert summary["frozen_layers"] == 1 and summary["embeddings_frozen"]

    model, summary = _load(tiny_model_dir, transfer="freeze_bottom", freeze_layers=0)
    frozen = {n for n, _ in model.named_parameters()} - _trainable(model)
    assert frozen and all(n.startswith("bert.embeddings.") for n in frozen)


def test_freeze_bottom_clips_to_the_number_of_layers(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pretune.models.transfer"):
        model, summary = _load(tiny_model_dir, transfer="freeze_bottom", freeze_layers=5)
    assert summary["frozen_layers"] == 2
    assert "freeze_layers=5 but the model has 2 layers" in caplog.text
    assert _trainable(model) == {n for n, _ in model.named_parameters()
                                 if n.startswith(("bert.pooler.", "classifier."))}


def test_a_second_strategy_on_the_same_model_starts_from_scratch(tiny_model_dir):
    model, _ = _load(tiny_model_dir, transfer="linear_probe")
    apply_transfer(model, ModelConfig(transfer="full"))
    assert all(p.requires_grad for p in model.parameters())


def test_reinit_changes_the_top_layers_only(tiny_model_dir):
    before, _ = _load(tiny_model_dir)
    model, summary = _load(tiny_model_dir, reinit_layers=1)
    assert summary["reinit_layers"] == 1
    old, new = before.state_dict(), model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    top = {k for k in old if k.startswith("bert.encoder.layer.1.")}
    # Every top-layer matrix is redrawn (LayerNorms and biases are reset to 1 and 0 as they were).
    assert {k for k in top if k.endswith("dense.weight") or ("self." in k and "weight" in k)} <= changed
    assert changed <= top
    q = new["bert.encoder.layer.1.attention.self.query.weight"]
    assert 0.015 < q.std().item() < 0.025  # the model's own init: N(0, initializer_range=0.02)


def test_reinit_is_independent_of_the_strategy_and_clipped(tiny_model_dir):
    before, _ = _load(tiny_model_dir)
    model, summary = _load(tiny_model_dir, transfer="linear_probe", reinit_layers=9)
    assert summary["reinit_layers"] == 2
    key = "bert.encoder.layer.0.output.dense.weight"
    assert not torch.equal(before.state_dict()[key], model.state_dict()[key])
    assert torch.equal(before.bert.embeddings.word_embeddings.weight,
                       model.bert.embeddings.word_embeddings.weight)


@pytest.mark.parametrize(
    "arch, layers, embeddings",
    [("gpt2", "transformer.h", ["wte", "wpe"]),
     ("distilbert", "distilbert.transformer.layer", ["embeddings"]),
     ("llama", "model.layers", ["embed_tokens"]),
     ("roberta", "roberta.encoder.layer", ["embeddings"])],
)
def test_layers_and_embeddings_are_found_in_every_architecture(arch, layers, embeddings):
    model = tiny(arch)
    name, found = find_layers(model)
    assert name == layers and len(found) == 2
    named = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    assert [named[id(m)] for m in find_embeddings(model)] == embeddings

    summary = apply_transfer(model, ModelConfig(transfer="freeze_bottom", freeze_layers=1,
                                                reinit_layers=1))
    assert summary["frozen_layers"] == 1
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".0." in n for n in frozen) and not any(".1." in n for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
