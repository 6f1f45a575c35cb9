"""End to end on the packaged MiniLM and real SST-2 rows (slow: minutes, not seconds)."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import pretune

from tests.conftest import minilm_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sst2_small(sst2_dir, tmp_path_factory):
    """600 training rows, 200 validation rows, 200 test rows of SST-2."""
    d = tmp_path_factory.mktemp("sst2")
    pd.read_csv(sst2_dir / "train.csv").sample(600, random_state=0).to_csv(d / "train.csv", index=False)
    pd.read_csv(sst2_dir / "validation.csv").sample(200, random_state=0).to_csv(d / "valid.csv", index=False)
    pd.read_csv(sst2_dir / "test.csv").sample(200, random_state=0).to_csv(d / "test.csv", index=False)
    return d


def test_train_learns_sst2_and_the_model_loads_with_transformers(sst2_small, tmp_path):
    result = pretune.train(model=minilm_dir(), train=str(sst2_small / "train.csv"),
                           valid=str(sst2_small / "valid.csv"), out=tmp_path / "m",
                           epochs=2, lr=1e-4, batch_size=16)
    assert result.metrics["accuracy"] >= 0.75

    preds = pretune.predict(tmp_path / "m", sst2_small / "test.csv")
    test = pd.read_csv(sst2_small / "test.csv")
    assert (preds["prediction"].astype(int) == test["label"]).mean() >= 0.72

    # The packaged MiniLM pools by the mean of its tokens, as it was trained: a pooling the
    # standard BERT class lacks, so the model carries it in pretune_head.py.
    assert (tmp_path / "m" / "pretune_head.py").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "m", trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    enc = tok(test["text"].tolist()[:8], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1)[:, 1].numpy()
    assert np.allclose(probs, preds["prob_1"].to_numpy()[:8], atol=1e-4)


def test_tune_keeps_a_best_model_whose_recorded_score_is_real(sst2_small, tmp_path):
    result = pretune.tune(model=minilm_dir(), train=str(sst2_small / "train.csv"),
                          valid=str(sst2_small / "valid.csv"), out=tmp_path / "run",
                          budget="3trials", fixed={"epochs": 1})
    assert result.best_trial is not None
    meta = yaml.safe_load((result.path / "best" / "pretune.yaml").read_text())
    assert meta["trial"] == result.best_trial
    # best/ is that trial's recipe refit on the training and validation rows (the default), so
    # its recorded score is the trial's own, which the trial's kept model gives afresh.
    assert meta["made_of"]["kind"] == "refit"
    assert meta["data"]["train_rows"] == meta["made_of"]["refit"]["rows"]
    kept = result.path / "kept" / f"trial-{result.best_trial:04d}"
    preds = pretune.predict(kept, sst2_small / "valid.csv")
    valid = pd.read_csv(sst2_small / "valid.csv")
    fresh = (preds["prediction"].astype(int) == valid["label"]).mean()
    assert fresh == pytest.approx(result.best_metrics["accuracy"], abs=1 / 200 + 1e-9)
    assert len(pd.read_csv(result.path / "trials.csv")) == 3
