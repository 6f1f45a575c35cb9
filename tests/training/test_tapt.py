"""Task-adaptive pretraining: the adapted encoder, its cache, and a run and a search using it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pretune.api import build_config
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


def test_a_run_with_tapt_trains_and_saves_a_plain_classifier(tiny_learner_dir, sentiment_csv,
                                                            tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = fit(config(tiny_learner_dir, sentiment_csv, tapt_steps=10), tmp_path / "model")
    assert "tapt" in result.timings and not result.train_result.failed
    assert result.config.model.model == tiny_learner_dir  # the pretrained id is what is recorded
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert loaded.config.num_labels == 2


def test_given_unlabeled_texts_the_default_space_searches_tapt_steps(tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("text\n", encoding="utf-8")
    dims, _ = resolve_space(None, None, build_config(None, {"unlabeled": str(extra)}))
    assert [d.choices for d in dims if d.name == "tapt_steps"] == [(0, 200, 500)]
    dims, _ = resolve_space(None, None, build_config(None, {}))
    assert "tapt_steps" not in [d.name for d in dims]
    dims, pinned = resolve_space(None, {"tapt_steps": "50"}, build_config(None, {"unlabeled": str(extra)}))
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
               "--no-lr-range-test")
    assert done.exit_code == 0, done.output
    import pandas as pd

    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["params_tapt_steps"]) <= {0, 8} and len(trials) == 3
    adapted = list((out / "cache").glob("tapt-*"))
    assert len(adapted) == int((trials["params_tapt_steps"] == 8).any())
    for d in adapted:
        assert json.loads((d / tapt.INFO_FILE).read_text())["texts"] == 48 + 2
