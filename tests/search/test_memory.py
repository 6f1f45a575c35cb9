"""Trials release their models: memory after 10 trials is that after 2."""

from __future__ import annotations

import pretune
from pretune.search.study import rss_mb

from .helpers import NARROW, data_files


def test_memory_stays_flat_across_trials(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    after: dict[int, float] = {}
    result = pretune.tune(
        model=tiny_model_dir, train=str(train), valid=str(valid), out=tmp_path / "run",
        budget="10trials", space=NARROW, fixed={"epochs": 1, "threads": 1}, pruner="none",
        precision="fp32", on_trial=lambda report: after.__setitem__(report.number, rss_mb()),
    )
    assert sorted(after) == list(range(10)) and (result.trials["state"] == "COMPLETE").all()
    assert after[9] <= 1.10 * after[1], after
    # Peak memory during a trial does not creep up either.
    peaks = result.trials["peak_rss_mb"].tolist()
    assert peaks[9] <= 1.10 * peaks[1], peaks
