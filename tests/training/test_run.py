"""A whole run: fit, save, load with plain transformers, predict, same probabilities."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pretune.api import build_config
from pretune.training.run import fit, predict


def quick(tiny_model_dir, train_csv, **kw):
    settings = dict(model=tiny_model_dir, train=str(train_csv), epochs=2, lr=1e-3, batch_size=8,
                    precision="fp32", threads=1)
    settings.update(kw)
    return build_config(None, settings)


@pytest.mark.parametrize("head_layers", [0, 1])
def test_save_load_predict_round_trip_gives_identical_probabilities(tiny_model_dir, sentiment_csv, tmp_path, head_layers):
    result = fit(quick(tiny_model_dir, sentiment_csv, head_layers=head_layers), tmp_path / "model")
    assert result.path == tmp_path / "model"
    meta = yaml.safe_load((result.path / "pretune.yaml").read_text())
    assert meta["labels"] == ["negative", "positive"]
    assert meta["metrics"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert len(meta["data"]["fingerprint"]) == 64

    frame = pd.read_csv(sentiment_csv)
    preds = predict(result.path, sentiment_csv, output=tmp_path / "preds.csv", batch_size=5)
    assert list(preds.columns[-3:]) == ["prediction", "prob_negative", "prob_positive"]
    assert len(preds) == len(frame) and (preds["text"] == frame["text"]).all()
    written = pd.read_csv(tmp_path / "preds.csv")
    assert np.allclose(written["prob_positive"], preds["prob_positive"])

    # The in-memory model of the run gives the same probabilities as the reloaded one.
    tok = AutoTokenizer.from_pretrained(result.path)
    enc = tok(frame["text"].tolist()[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        live = torch.softmax(result.model(**enc).logits, -1)[:, 1].numpy()
    assert np.allclose(live, preds["prob_positive"].to_numpy()[:6], atol=1e-5)

    if head_layers == 0:  # a plain head loads with transformers alone
        plain = AutoModelForSequenceClassification.from_pretrained(result.path).eval()
        with torch.no_grad():
            again = torch.softmax(plain(**enc).logits, -1)[:, 1].numpy()
        assert np.allclose(again, live, atol=1e-5)
        assert plain.config.id2label == {0: "negative", 1: "positive"}


def test_no_validation_file_splits_train_and_records_it(tiny_model_dir, sentiment_csv, tmp_path):
    result = fit(quick(tiny_model_dir, sentiment_csv, valid_fraction=0.25, epochs=1), tmp_path / "m")
    meta = yaml.safe_load((result.path / "pretune.yaml").read_text())
    assert meta["data"]["valid_source"] == "split"
    assert meta["data"]["valid_rows"] == 12 and meta["data"]["train_rows"] == 36


@pytest.mark.parametrize("transfer", ["linear_probe", "freeze_bottom"])
def test_frozen_parameters_do_not_move_in_a_real_run(tiny_model_dir, sentiment_csv, tmp_path, transfer):
    from pretune.models.load import load_pretrained

    cfg = quick(tiny_model_dir, sentiment_csv, transfer=transfer, freeze_layers=1, epochs=1)
    before, _ = load_pretrained(cfg.model, 2, ["negative", "positive"])
    result = fit(cfg)
    after = dict(result.model.named_parameters())
    frozen_prefixes = ["bert.embeddings", "bert.encoder.layer.0"]
    if transfer == "linear_probe":
        frozen_prefixes.append("bert.encoder.layer.1")
    for name, p in before.named_parameters():
        if any(name.startswith(f) for f in frozen_prefixes):
            assert torch.equal(p, after[name].detach().cpu()), name
    assert not torch.equal(before.classifier.weight, after["classifier.weight"].detach().cpu())


def test_same_seed_same_result(tiny_model_dir, sentiment_csv):
    a = fit(quick(tiny_model_dir, sentiment_csv, epochs=1, seed=3))
    b = fit(quick(tiny_model_dir, sentiment_csv, epochs=1, seed=3))
    assert a.train_result.history[-1]["train_loss"] == b.train_result.history[-1]["train_loss"]


def test_lora_run_saves_a_merged_plain_model(tiny_model_dir, sentiment_csv, tmp_path):
    result = fit(quick(tiny_model_dir, sentiment_csv, transfer="lora", lora_r=4, epochs=1), tmp_path / "m")
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    preds = predict(tmp_path / "m", sentiment_csv)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    enc = tok(preds["text"].tolist()[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(plain(**enc).logits, -1)[:, 1].numpy()
    assert np.allclose(probs, preds["prob_positive"].to_numpy()[:4], atol=1e-5)
    assert result.metrics
