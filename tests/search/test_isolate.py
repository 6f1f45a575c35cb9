"""Trials in a child process: the same result as in this process, pruning from here, and a
child the kernel kills is a failed trial while the search goes on."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

import pretune
from pretune.config import TuneConfig, validate_tune
from pretune.errors import ConfigError
from pretune.search import isolate, memory_plan
from pretune.training import memory

from .helpers import NARROW, data_files

FIXED = {"epochs": 1, "threads": 1, "warmup_ratio": 0.0}


def search(model_dir, tmp_path, name, budget, isolate_trials, **options):
    train, valid = data_files(tmp_path / "data")
    return pretune.tune(
        model=model_dir, train=str(train), valid=str(valid), out=tmp_path / name,
        budget=budget, space=NARROW, fixed=FIXED, pruner=options.pop("pruner", "none"),
        precision="fp32", priors=False, lr_range_test=False, seed_check=0, assemble=False,
        isolate_trials=isolate_trials, **options)


def test_an_isolated_trial_matches_the_same_trial_here(tiny_model_dir, tmp_path):
    here = search(tiny_model_dir, tmp_path, "here", "1trials", "never").trials
    there = search(tiny_model_dir, tmp_path, "there", "2trials", "always")
    trials = there.trials
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 2
    assert (trials["isolated"] == "isolate_trials=always").all()
    assert here["isolated"].isna().all()
    assert here.loc[0, "params_lr"] == trials.loc[0, "params_lr"]  # the same sample
    for column in ("value", "valid_loss", "valid_accuracy", "steps"):
        assert math.isclose(here.loc[0, column], trials.loc[0, column], rel_tol=1e-4,
                            abs_tol=1e-6), column
    # The child's model came back: best/ loads and trials.csv has every trial.
    run = Path(there.path)
    from pretune.models.io import load_model_dir

    model, _, meta = load_model_dir(run)
    assert meta["trial"] == there.best_trial and model is not None
    assert len(pd.read_csv(run / "trials.csv")) == 2
    assert (trials["memory_peak_mb"] > 0).all() and (trials["peak_rss_mb"] > 0).all()
    assert not list(run.glob(".trial-*")), "the child's model folders are removed"


def test_a_killed_child_is_a_failed_trial_and_the_search_goes_on(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(isolate, "CHILD", "tests.search.isolate_helpers:killed_at_trial_1")
    result = search(tiny_model_dir, tmp_path, "run", "3trials", "always")
    trials = result.trials.set_index("number")
    assert trials["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials.loc[1, "fail_reason"] == isolate.KILLED
    assert "out of memory" in isolate.KILLED and "gradient checkpointing" in isolate.KILLED
    assert result.best_trial in (0, 2) and (Path(result.path) / "best").is_dir()


def test_the_pruner_here_stops_the_trial_in_the_child(tiny_model_dir, tmp_path, monkeypatch,
                                                      caplog):
    caplog.set_level(logging.INFO)
    asked = []

    def should_prune(trial):  # the pruner runs in this process, on what the child reported
        asked.append(trial.number)
        return True

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", should_prune)
    result = search(tiny_model_dir, tmp_path, "run", "1trials", "always",
                    evals_per_epoch=4, pruner="median")
    trial = result.trials.iloc[0]
    assert trial["state"] == "PRUNED" and trial["stop_reason"] == "pruned"
    assert asked == [0]  # asked once: the child stopped at the first judgement
    assert trial["epochs"] < 1  # judged at its first evaluation, a quarter into the epoch
    # The child's log records are logged here, under their own names (no model is built here).
    assert any(r.name == "pretune.training.run" and r.getMessage().startswith("transfer:")
               for r in caplog.records)


def test_auto_isolates_a_trial_whose_estimate_is_tight(tiny_model_dir, monkeypatch):
    import torch

    from pretune.config import RunConfig

    config = RunConfig().with_settings({"model": tiny_model_dir, "max_length": 16,
                                        "batch_size": 8})
    task = SimpleNamespace(label_names=["negative", "positive"], fingerprint="toy")
    assert memory_plan.isolation("never", config, task, None) is None
    assert memory_plan.isolation("always", config, task, None) == "isolate_trials=always"
    fitted, _ = memory_plan._fit(config, task, None, torch.device("cpu"))
    need = fitted.estimate.total
    roomy = memory.Limit(int(need / (memory_plan.TIGHT_SHARE - 0.1)), "free RAM")
    tight = memory.Limit(int(need / (memory_plan.TIGHT_SHARE + 0.1)), "free RAM")
    monkeypatch.setattr(memory, "limit", lambda device=None: roomy)
    assert memory_plan.isolation("auto", config, task, None) is None
    monkeypatch.setattr(memory, "limit", lambda device=None: tight)
    why = memory_plan.isolation("auto", config, task, None)
    assert why is not None and "of the" in why and "free RAM" in why


def test_the_setting_is_checked():
    with pytest.raises(ConfigError, match="isolate_trials must be auto, always or never, but "
                                          "got 'sometimes'. Pass --isolate-trials auto"):
        validate_tune(TuneConfig(isolate_trials="sometimes"))
    assert validate_tune(TuneConfig()).isolate_trials == "auto"


def test_a_child_ending_without_a_result_says_why():
    assert isolate.died(-9) == isolate.KILLED
    assert "SIGSEGV" in isolate.died(-11) and "out of memory" in isolate.died(-11)
    assert isolate.died(3) == "the trial's process ended with exit code 3 without a result"


def test_the_command_refuses_an_unknown_isolate_trials_in_one_line(tiny_model_dir, tmp_path):
    from .helpers import cli

    train, valid = data_files(tmp_path / "data")
    result = cli("tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
                 "--out", tmp_path / "run", "--isolate-trials", "sometimes")
    assert result.exit_code == 2, result.output
    assert "isolate_trials must be auto, always or never, but got 'sometimes'" in result.output
    assert "Traceback" not in result.output


def test_a_search_isolates_its_tight_trials_by_default(tiny_model_dir, tmp_path, monkeypatch):
    # A limit 1.4 times what this process holds: a trial's estimate (which starts from what
    # the process holds) is more than 0.7 of it, yet fits as set. The child measures its own.
    monkeypatch.setattr(memory, "limit", lambda device=None: memory.Limit(
        int(memory.rss_bytes() * 1.4), "a test limit"))
    trials = search(tiny_model_dir, tmp_path, "run", "1trials", None).trials
    assert trials.loc[0, "state"] == "COMPLETE"
    assert "the process may use" in trials.loc[0, "isolated"]
    assert "a test limit" in trials.loc[0, "isolated"]
