"""Pooling: the masked mean or max in place of BERT's pooler, the checkpoint's own read by auto,
and saved models that rebuild it with transformers' Auto classes and with pretune's loader."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from pretune.config import ModelConfig, RunConfig, validate
from pretune.errors import ConfigError, ModelError
from pretune.models import build_model, checkpoint_pooling
from pretune.models.io import load_model_dir, save_model
from pretune.models.mlp_head import TokenPooler
from pretune.models.pooling import apply_pooling

from .helpers import tiny

LABELS = ["negative", "positive"]
TEXTS = ["a wonderful , moving film that i loved", "dull"]


def sentence_transformers_dir(tiny_model_dir, tmp_path, **modes):
    """The tiny BERT laid out as a sentence-transformers checkpoint with a Pooling module."""
    path = tmp_path / "st-model"
    shutil.copytree(tiny_model_dir, path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (path / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False, **modes}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return str(path)


def built(model_dir, **settings):
    model, tokenizer, summary = build_model(ModelConfig(model=str(model_dir), **settings), 2, LABELS)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained head, not its init
        for p in model.classifier.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval(), tokenizer, summary


def run(model, tokenizer, texts=TEXTS):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out, batch["attention_mask"]


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_token_pooling_feeds_the_classifier_the_masked_mean_or_max(tiny_model_dir, mode):
    model, tokenizer, summary = built(tiny_model_dir, pooling=mode)
    assert summary["pooling"] == mode and isinstance(model.bert.pooler, TokenPooler)
    out, mask = run(model, tokenizer)
    assert mask[1].sum() < mask[0].sum()  # the short text is padded
    states = out.hidden_states[-1]
    pooled = []
    for row, m in zip(states, mask):
        kept = row[m.bool()]
        pooled.append(kept.mean(0) if mode == "mean" else kept.max(0).values)
    expected = model.classifier(torch.stack(pooled))
    assert torch.allclose(out.logits, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_padding_does_not_change_a_texts_logits(tiny_model_dir, mode):
    model, tokenizer, _ = built(tiny_model_dir, pooling=mode)
    alone, _ = run(model, tokenizer, TEXTS[1:])
    padded, _ = run(model, tokenizer, TEXTS)
    assert torch.allclose(alone.logits[0], padded.logits[1], atol=1e-5)


def test_without_a_mask_every_token_counts(tiny_model_dir):
    model, tokenizer, _ = built(tiny_model_dir, pooling="mean")
    ids = tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with_mask = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        without = model(input_ids=ids).logits
    assert torch.allclose(with_mask, without, atol=1e-6)


def test_cls_keeps_the_models_own_pooler(tiny_model_dir):
    model, _, summary = built(tiny_model_dir, pooling="cls")
    assert summary["pooling"] == "cls" and not isinstance(model.bert.pooler, TokenPooler)
    assert getattr(model.config, "pretune_pooling", None) is None


@pytest.mark.parametrize("modes,expected", [
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_max_tokens": True}, "max"),
    ({"pooling_mode_cls_token": True}, "cls"),
])
def test_auto_reads_the_checkpoints_pooling(tiny_model_dir, tmp_path, modes, expected):
    path = sentence_transformers_dir(tiny_model_dir, tmp_path, **modes)
    assert checkpoint_pooling(ModelConfig(model=path)) == expected
    model, _, summary = built(path)  # pooling=auto, the default
    assert summary["pooling"] == expected
    pooler = model.bert.pooler
    assert (pooler.mode if isinstance(pooler, TokenPooler) else "cls") == expected


def test_auto_is_cls_for_a_model_that_names_no_pooling(tiny_model_dir):
    assert checkpoint_pooling(ModelConfig(model=tiny_model_dir)) is None
    assert checkpoint_pooling(ModelConfig(model="someone/not-in-the-cache")) is None
    _, _, summary = built(tiny_model_dir)
    assert summary["pooling"] == "cls"


@pytest.mark.parametrize("head_layers", [0, 1])
def test_a_saved_model_rebuilds_its_pooling_with_auto_classes_and_with_pretune(
        tiny_model_dir, tmp_path, head_layers):
    model, tokenizer, _ = built(tiny_model_dir, pooling="mean", head_layers=head_layers)
    expected, _ = run(model, tokenizer)
    out = save_model(model, tokenizer, tmp_path / "best", {})
    config = json.loads((out / "config.json").read_text())
    assert config["pretune_pooling"] == "mean"
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("pretune_head.")

    remote, info = AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours, _, _ = load_model_dir(out)
    for loaded in (remote.eval(), ours):
        got, _ = run(loaded, tokenizer)
        assert torch.equal(got.logits, expected.logits)


def test_a_saved_pooled_model_fine_tuned_again_keeps_its_pooling(tiny_model_dir, tmp_path):
    model, tokenizer, _ = built(tiny_model_dir, pooling="max")
    out = save_model(model, tokenizer, tmp_path / "best", {})
    assert checkpoint_pooling(ModelConfig(model=str(out))) == "max"
    again, _, summary = built(out)
    assert summary["pooling"] == "max" and again.config.pretune_pooling == "max"


def test_pooling_must_be_a_known_name():
    with pytest.raises(ConfigError, match="pooling must be one of auto, cls, mean, max"):
        validate(RunConfig().with_settings({"pooling": "avg"}))


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_a_model_without_a_pooler_refuses_mean_and_keeps_its_head_under_auto(arch, monkeypatch,
                                                                             caplog):
    model = tiny(arch, num_labels=2)
    with pytest.raises(ModelError, match="Use pooling=auto or pooling=cls"):
        apply_pooling(model, ModelConfig(model="x", pooling="mean"))
    monkeypatch.setattr("pretune.models.pooling.checkpoint_pooling", lambda cfg: "mean")
    with caplog.at_level(logging.INFO, logger="pretune.models.pooling"):
        assert apply_pooling(model, ModelConfig(model="x", pooling="auto")) == "cls"
    assert "no pooler to replace" in caplog.text


def test_a_lora_model_with_mean_pooling_merges_saves_and_loads_the_same(tiny_model_dir, tmp_path):
    from pretune.models import merge_lora

    model, tokenizer, _ = build_model(
        ModelConfig(model=tiny_model_dir, pooling="mean", transfer="lora", lora_r=2), 2, LABELS)
    with torch.no_grad():  # adapters off their zero init, so merging has something to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    expected, _ = run(model, tokenizer)
    merged = merge_lora(model)
    assert isinstance(merged.bert.pooler, TokenPooler)
    out = save_model(merged, tokenizer, tmp_path / "best", {})
    loaded, _, _ = load_model_dir(out)
    got, _ = run(loaded, tokenizer)
    assert torch.allclose(got.logits, expected.logits, atol=1e-5)
