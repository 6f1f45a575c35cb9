"""Task-adaptive pretraining: the adapted encoder, its cache, and a run and a search using it."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

import pretune
from pretune.api import build_config
from pretune.data import text_prep
from pretune.data.task import load_task
from pretune.data.unlabeled import read_unlabeled
from pretune.errors import DataError
from pretune.search.space import resolve_space
from pretune.training import tapt
from pretune.training.run import fit
from tests.search.helpers import cli


def config(model_dir, train_csv, **kw):
    settings = dict(model=model_dir, train=str(train_csv), epochs=1, lr=1e-3, batch_size=8,
                    precision="fp32", threads=1, tapt_steps=30)
    settings.update(kw)
    return build_config(None, settings)


def weights(directory) -> dict[str, torch.Tensor]:
    found = {}
    for f in sorted(directory.glob("*.safetensors")):
        found.update(load_file(str(f)))
    return {k.removeprefix("bert."): v for k, v in found.items()}


def test_the_adapted_encoder_learns_keeps_the_pooler_and_is_cached(tiny_learner_dir, sentiment_csv,
                                                                     tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(tapt, "LR", 3e-3)  # a tiny random model learns at a higher rate
    cfg = config(tiny_learner_dir, sentiment_csv)
    task = load_task(cfg.data, 0)
    with tapt.adapted_source(cfg, task, 0, tmp_path / "cache") as (source, info):
        adapted = Path(source)
        assert adapted.parent == tmp_path / "cache" and (adapted / "config.json").is_file()
        assert info["steps"] == 30 and info["texts"] == len(task.train.texts)
        assert info["loss_last"] < info["loss_first"]  # the masked-LM objective was learned
    before, after = weights(Path(tiny_learner_dir)), weights(adapted)
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(before["pooler.dense.weight"], after["pooler.dense.weight"])
    assert not [k for k in after if k.startswith(("cls.", "classifier."))]

    def no_second_run(*args, **kwargs):
        raise AssertionError("the cached adaptation must be reused")

    monkeypatch.setattr(tapt, "_adapt", no_second_run)
    with tapt.adapted_source(cfg, task, 0, tmp_path / "cache") as (again, info_again):
        assert again == source and info_again == info
    # Another length is another adaptation.
    with pytest.raises(AssertionError, match="reused"):
        with tapt.adapted_source(config(tiny_learner_dir, sentiment_csv, tapt_steps=31), task, 0,
                                 tmp_path / "cache"):
            pass


def test_unlabeled_texts_join_the_corpus_and_change_the_key(tiny_model_dir, sentiment_csv, tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("an unseen review\n\n  another one  \n", encoding="utf-8")
    plain = config(tiny_model_dir, sentiment_csv)
    more = config(tiny_model_dir, sentiment_csv, unlabeled=str(extra))
    task = load_task(plain.data, 0)
    texts, _ = tapt.corpus(more, task)
    assert texts[-2:] == ["an unseen review", "another one"]
    assert len(texts) == len(task.train.texts) + 2
    assert (tapt.adaptation_key(plain, *tapt.corpus(plain, task), 0)
            != tapt.adaptation_key(more, texts, None, 0))


def test_unlabeled_texts_get_the_runs_preprocessing_and_it_changes_the_key(tiny_model_dir,
                                                                            sentiment_csv, tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("An UNSEEN Review\nThe Acting was WONDERFUL\n", encoding="utf-8")
    raw = config(tiny_model_dir, sentiment_csv, unlabeled=str(extra))
    lower = config(tiny_model_dir, sentiment_csv, unlabeled=str(extra), lowercase=True)
    full = config(tiny_model_dir, sentiment_csv, unlabeled=str(extra), lowercase=True,
                  stopwords=True, stem="porter")
    task = load_task(raw.data, 0)
    assert tapt.corpus(raw, task)[0][-2:] == ["An UNSEEN Review", "The Acting was WONDERFUL"]
    # The training texts are lower-case already: lowercasing changes only the unlabeled ones,
    # and the adaptation's key follows them.
    lowered = text_prep.apply_to_task(task, lower.data)
    assert lowered.train.texts == task.train.texts
    texts, _ = tapt.corpus(lower, lowered)
    assert texts[-2:] == ["an unseen review", "the acting was wonderful"]
    assert (tapt.adaptation_key(lower, texts, None, 0)
            != tapt.adaptation_key(raw, *tapt.corpus(raw, task), 0))
    prepared = text_prep.apply_to_task(task, full.data)
    texts, _ = tapt.corpus(full, prepared)
    assert texts[-2:] == ["unseen review", "act wonder"]
    assert texts[:-2] == prepared.train.texts and texts[0] != task.train.texts[0]


def test_a_run_adapts_on_the_preprocessed_texts(tiny_model_dir, sentiment_csv, tmp_path,
                                                 monkeypatch):
    extra = tmp_path / "more.txt"
    extra.write_text("The Acting was WONDERFUL\n", encoding="utf-8")
    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, texts, pairs, seed, target):
        seen.append(list(texts))
        raise Stop  # the texts are what this test is about; no need to train

    monkeypatch.setattr(tapt, "_adapt", capture)
    with pytest.raises(Stop):
        fit(config(tiny_model_dir, sentiment_csv, unlabeled=str(extra), lowercase=True,
                   stopwords=True, stem="porter"))
    options = text_prep.TextOptions(lowercase=True, stopwords=True, stem="porter")
    [texts] = seen
    assert texts[-1] == "act wonder"  # the unlabeled text, preprocessed as the training texts
    prepared = set(text_prep.preprocess(pd.read_csv(sentiment_csv)["text"].tolist(), options))
    assert set(texts[:-1]) <= prepared and "wonder , move film" in texts


def test_read_unlabeled_formats_and_errors(tmp_path):
    (tmp_path / "t.csv").write_text("review,stars\ngood,5\nbad,1\n", encoding="utf-8")
    assert read_unlabeled(str(tmp_path / "t.csv")) == ["good", "bad"]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="must have a text column"):
        read_unlabeled(str(tmp_path / "other.csv"))
    assert read_unlabeled(str(tmp_path / "other.csv"), "b") == ["2"]
    with pytest.raises(DataError, match="does not exist"):
        read_unlabeled(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="at least one text"):
        read_unlabeled(str(tmp_path / "empty.txt"))


def transformers_probabilities(model_dir, texts) -> np.ndarray:
    """Class probabilities of a saved model, with transformers alone (no pretune)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()


def test_a_run_with_tapt_trains_and_saves_a_plain_classifier(tiny_learner_dir, sentiment_csv,
                                                            tmp_path):
    result = fit(config(tiny_learner_dir, sentiment_csv, tapt_steps=10), tmp_path / "model")
    assert "tapt" in result.timings and not result.train_result.failed
    assert result.config.model.model == tiny_learner_dir  # the pretrained id is what is recorded
    saved = tmp_path / "model"
    assert not list(saved.glob("tapt*")) and (saved / "model.safetensors").is_file()

    # pretune.predict and transformers alone give the same probabilities and labels.
    preds = pretune.predict(saved, sentiment_csv)
    texts = pd.read_csv(sentiment_csv)["text"].tolist()
    assert len(preds) == len(texts)
    probs = transformers_probabilities(saved, texts)
    assert np.allclose(probs, preds[["prob_negative", "prob_positive"]].to_numpy(), atol=1e-5)
    assert list(preds["prediction"]) == [("negative", "positive")[i] for i in probs.argmax(1)]


def test_given_unlabeled_texts_the_default_space_searches_tapt_steps(tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("text\n", encoding="utf-8")
    text = {"unlabeled": str(extra), "modality": "text"}  # a search resolves the modality first
    dims, _ = resolve_space(None, None, build_config(None, text))
    assert [d.choices for d in dims if d.name == "tapt_steps"] == [(0, 200, 500)]
    dims, _ = resolve_space(None, None, build_config(None, {"modality": "text"}))
    assert "tapt_steps" not in [d.name for d in dims]
    dims, _ = resolve_space(None, None, build_config(None, {**text, "modality": "image"}))
    assert "tapt_steps" not in [d.name for d in dims]  # masked-LM pretraining is for texts
    dims, pinned = resolve_space(None, {"tapt_steps": "50"}, build_config(None, text))
    assert pinned["tapt_steps"] == 50 and "tapt_steps" not in [d.name for d in dims]


def test_a_search_with_unlabeled_texts_chooses_the_tapt_length(tiny_learner_dir, tmp_path):
    from tests.search.helpers import data_files, space_file

    train, valid = data_files(tmp_path / "data")
    extra = tmp_path / "more.txt"
    extra.write_text("a fine film\na bad film\n", encoding="utf-8")
    space = space_file(tmp_path / "space.yaml", {"extend": False, "lr": {"low": 1e-3, "high": 1e-2,
                                                 "log": True}, "tapt_steps": {"choices": [0, 8]}})
    out = tmp_path / "run"
    done = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
               "--unlabeled", extra, "--budget", "3trials", "--out", out, "--space", space,
               "--fixed", "epochs=1", "--precision", "fp32", "--no-report", "--no-priors",
               "--no-lr-range-test", "--pruner", "none")  # every trial trains to its end
    assert done.exit_code == 0, done.output
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["params_tapt_steps"]) <= {0, 8} and len(trials) == 3
    adapted = list((out / "cache").glob("tapt-*"))
    assert len(adapted) == int((trials["params_tapt_steps"] == 8).any())
    # A trial went through the adapted encoder (and timed it) exactly when it chose TAPT.
    study = optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}")
    for t in study.trials:
        assert ("tapt" in t.user_attrs["timings"]) == (t.params["tapt_steps"] == 8), t.number
    for d in adapted:
        assert json.loads((d / tapt.INFO_FILE).read_text())["texts"] == 48 + 2


def test_a_search_with_tapt_pinned_adapts_once_and_its_best_model_predicts(tiny_learner_dir,
                                                                           tmp_path, monkeypatch):
    from tests.search.helpers import data_files, space_file

    train, valid = data_files(tmp_path / "data")
    extra = tmp_path / "more.txt"
    extra.write_text("a fine film\na bad film\n", encoding="utf-8")
    adaptations = []
    real_adapt = tapt._adapt

    def counted(cfg, texts, pairs, seed, target):
        adaptations.append(len(texts))
        return real_adapt(cfg, texts, pairs, seed, target)

    monkeypatch.setattr(tapt, "_adapt", counted)  # the trials run in this process
    # tapt_steps pinned by a plain value: every trial fine-tunes the adapted encoder.
    space = space_file(tmp_path / "space.yaml", {"extend": False, "tapt_steps": 8,
                                                 "lr": {"low": 3e-3, "high": 3e-2, "log": True}})
    out = tmp_path / "run"
    done = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
               "--unlabeled", extra, "--budget", "3trials", "--out", out, "--space", space,
               "--fixed", "epochs=2", "--fixed", "batch_size=8", "--fixed", "threads=1",
               "--pruner", "none", "--precision", "fp32", "--no-report", "--no-priors",
               "--no-lr-range-test", "--no-refit",  # a refit adapts again, on its own texts
               "--no-assemble")  # and so does a distilled ensemble
    assert done.exit_code == 0, done.output

    # One adaptation, on the training and unlabeled texts, kept in the run's cache ...
    assert adaptations == [48 + 2]
    [adapted] = (out / "cache").glob("tapt-*")
    info = json.loads((adapted / tapt.INFO_FILE).read_text())
    assert info["steps"] == 8 and info["texts"] == 48 + 2
    # ... and every trial went through it: each timed its TAPT phase, which only the first paid.
    study = optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert all("tapt_steps" not in t.params for t in trials)
    seconds = [t.user_attrs["timings"]["tapt"] for t in trials]
    assert seconds[0] >= 0.5 * info["seconds"] and max(seconds[1:]) < 0.5 * seconds[0]

    # best/ records TAPT and the pretrained model, and predicts the same through pretune and
    # through transformers alone.
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["settings"]["model"]["tapt_steps"] == 8
    assert meta["settings"]["model"]["model"] == tiny_learner_dir
    assert meta["settings"]["data"]["unlabeled"] == str(extra)
    preds = pretune.predict(out, valid)
    labels = pd.read_csv(valid)["label"]
    assert (preds["prediction"] == labels).mean() == pytest.approx(meta["metrics"]["accuracy"])
    probs = transformers_probabilities(out / "best", preds["text"].tolist())
    assert np.allclose(probs, preds[["prob_negative", "prob_positive"]].to_numpy(), atol=1e-5)
    assert list(preds["prediction"]) == [("negative", "positive")[i] for i in probs.argmax(1)]
