"""A whole search, as `pretune tune` runs it, on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from sklearn.metrics import log_loss

import pretune
from pretune.search.study import DEADLINE, FAIL_STREAK, INTERRUPTED, derive_seed, make_sampler

from .helpers import NARROW, cli, data_files, space_file

BUDGET = 3


@pytest.fixture(scope="module")
def study_run(tiny_model_dir, tmp_path_factory):
    """A finished 3-trial search through the command line, and the arguments that ran it."""
    root = tmp_path_factory.mktemp("tune")
    train, valid = data_files(root / "data")
    space = space_file(root / "space.yaml", NARROW)
    out = root / "run"
    args = ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
            "--budget", f"{BUDGET}trials", "--out", out, "--space", space, "--fixed", "epochs=1",
            "--metric", "loss", "--pruner", "none", "--precision", "fp32",
            "--fixed", "threads=1", "--no-refit",  # best/: the search's own model (test_refit)
            "--no-assemble"]  # and the best trial's, not a soup or an ensemble's student
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return out, args, result, valid


def trials_of(out):
    return optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}").trials


def test_short_study_keeps_a_best_model_whose_recorded_metric_is_true(study_run):
    out, _, result, valid = study_run
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * BUDGET
    best = min(trials, key=lambda t: t.value)
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["trial"] == best.number
    assert meta["params"] == best.params
    assert meta["metrics"]["loss"] == pytest.approx(best.value, abs=1e-9)

    # A fresh evaluation of the saved model on the validation file gives the recorded metrics.
    preds = pretune.predict(out, valid)
    labels = pd.read_csv(valid)["label"]
    probs = preds[["prob_negative", "prob_positive"]].to_numpy()
    y = (labels == "positive").astype(int).to_numpy()
    assert (preds["prediction"] == labels).mean() == pytest.approx(meta["metrics"]["accuracy"])
    assert log_loss(y, probs, labels=[0, 1]) == pytest.approx(meta["metrics"]["loss"], abs=1e-4)

    # The summary names the best trial, its score and the model path.
    assert f"best_trial={best.number}" in result.stdout
    assert f"best_loss={best.value:.4f}" in result.stdout
    assert "best: trial" in result.stderr and str(out / "best") in result.stderr.replace("\n", "")


def test_trials_table_and_records(study_run):
    out, _, _, _ = study_run
    table = pd.read_csv(out / "trials.csv")
    assert list(table["number"]) == list(range(BUDGET))
    assert set(table["state"]) == {"COMPLETE"}
    for column in ("value", "params_lr", "params_batch_size", "seconds", "peak_rss_mb",
                   "stop_reason", "fail_reason", "valid_accuracy", "valid_loss"):
        assert column in table.columns
    assert (table["peak_rss_mb"] > 10).all() and (table["seconds"] > 0).all()
    assert np.allclose(table["value"], table["valid_loss"])
    for t in trials_of(out):
        settings = t.user_attrs["settings"]
        assert settings["epochs"] == 1.0  # --fixed pins it ...
        assert "epochs" not in t.params  # ... and it is not searched
        assert settings["lr"] == t.params["lr"] and settings["batch_size"] == t.params["batch_size"]
        assert settings["seed"] == derive_seed(0, t.number)
        assert settings["evals_per_epoch"] == 2
        assert t.user_attrs["metrics"]["loss"] == t.value
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert record["metric"] == "loss" and record["direction"] == "minimize"
    assert record["fixed"] == {"epochs": 1.0, "threads": 1}
    assert list(record["space"]) == ["lr", "batch_size"]
    assert "budget" not in record["tune"]
    assert not list(out.glob("best.tmp-*"))


def test_rerunning_a_finished_study_trains_nothing(study_run):
    out, args, _, _ = study_run
    before = [(t.number, t.state, t.params, t.value) for t in trials_of(out)]
    weights = (out / "best" / "model.safetensors").stat().st_mtime_ns
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert [(t.number, t.state, t.params, t.value) for t in trials_of(out)] == before
    assert (out / "best" / "model.safetensors").stat().st_mtime_ns == weights
    assert "0 run now" in result.stderr
    assert "best_trial=" in result.stdout  # it still prints the result


@pytest.mark.parametrize("change, name", [
    (["--seed", "1"], "seed"),
    (["--fixed", "epochs=2"], "epochs"),
    (["--metric", "accuracy"], "metric"),
])
def test_different_settings_on_an_existing_run_are_refused(study_run, change, name):
    out, args, _, _ = study_run
    args = list(args)
    if change[0] == "--fixed":
        args[args.index("epochs=1")] = change[1]
    elif change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += change
    result = cli(*args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"with {name} " in message and "--out" in message, message
    assert "Traceback" not in result.output
    assert len(trials_of(out)) == BUDGET


def test_a_new_budget_extends_the_search(study_run, tmp_path):
    """The budget may change between starts; the trials already run are kept."""
    out, args, _, _ = study_run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    args = list(args)
    args[args.index(out)] = copy
    args[args.index(f"{BUDGET}trials")] = f"{BUDGET + 1}trials"
    before = [(t.params, t.value) for t in trials_of(copy)]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    after = trials_of(copy)
    assert len(after) == BUDGET + 1 and [(t.params, t.value) for t in after[:BUDGET]] == before
    # The resumed sampler does not redraw the first start's points.
    assert after[BUDGET].params not in [p for p, _ in before]


def test_the_sampler_of_a_continued_search_is_seeded_differently():
    first = make_sampler("random", derive_seed(0, 0))
    later = make_sampler("random", derive_seed(0, 3))
    draw = lambda s: optuna.create_study(sampler=s).ask().suggest_float("x", 0, 1)  # noqa: E731
    assert draw(first) != draw(later)


@pytest.mark.parametrize("warmup, judged", [(0.0, 1.0), (0.6, 2.0)])
def test_pruning_stops_a_clearly_worse_trial(tiny_model_dir, tmp_path, warmup, judged):
    """Trial 0 learns (lr 1e-2); trial 1 diverges (lr 3.0). The ``asha`` strategy, from its first
    rung (one epoch), judges trial 1 and prunes it; when its
    warmup runs for 60% of its 3 epochs (to epoch 1.8), not before the first evaluation after
    the warmup, epoch 2. Every evaluation is reported. A recipe from practice (priors) with the
    same lr is never judged."""
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="pretune",
                                direction="minimize")
    study.enqueue_trial({"lr": 1e-2})
    study.enqueue_trial({"lr": 3.0})
    study.enqueue_trial({"lr": 3.0}, user_attrs={"source": "prior"})  # the third trial
    result = pretune.tune(
        model=tiny_model_dir, train=str(train), valid=str(valid), out=out, budget="3trials",
        space={"extend": False, "lr": {"low": 1e-4, "high": 5.0, "log": True}},
        fixed={"epochs": 3, "batch_size": 8, "schedule": "constant", "warmup_ratio": warmup,
               "patience": None, "threads": 1},
        metric="loss", strategy="asha", precision="fp32",
    )
    good, bad, recipe = trials_of(out)
    assert recipe.state.name == "COMPLETE" and recipe.params == {"lr": 3.0}  # never judged
    assert good.state.name == "COMPLETE" and good.params == {"lr": 1e-2}
    assert bad.state.name == "PRUNED" and bad.params == {"lr": 3.0}
    steps = list(range(50, round(judged * 100) + 1, 50))
    assert sorted(bad.intermediate_values) == steps  # every evaluation is reported
    assert bad.intermediate_values[50] > good.intermediate_values[50]
    assert bad.user_attrs["stop_reason"] == "pruned" and bad.user_attrs["epochs"] == judged
    assert max(good.intermediate_values) == 300
    assert result.best_trial == 0
    assert result.trials["state"].tolist() == ["COMPLETE", "PRUNED", "COMPLETE"]


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    from pretune.training import run

    real_fit, calls = run.fit, []

    def flaky_fit(config, *args, **kwargs):
        calls.append(config.train.lr)
        if len(calls) % 2 == 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_fit(config, *args, **kwargs)

    monkeypatch.setattr(run, "fit", flaky_fit)
    train, valid = data_files(tmp_path / "data")
    result = pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid),
                          out=tmp_path / "run", budget="4trials", space=NARROW,
                          fixed={"epochs": 1, "threads": 1}, pruner="none", precision="fp32")
    table = result.trials
    assert table["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    failed = table[table["state"] == "FAIL"]
    assert failed["fail_reason"].str.startswith("RuntimeError: CUDA error: an illegal memory").all()
    assert result.best_trial in (0, 2) and result.best_model is not None


def test_trials_that_keep_failing_the_same_way_stop_the_search(tiny_model_dir, tmp_path):
    """An exploding gradient at the first step leaves a trial without any evaluation."""
    train, valid = data_files(tmp_path / "data")
    with pytest.raises(pretune.PretuneError, match="exploding_gradient"):
        pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid),
                     out=tmp_path / "run", budget="20trials", space=NARROW,
                     fixed={"epochs": 1, "grad_norm_max": 1e-9, "threads": 1}, precision="fp32")
    table = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert table["state"].tolist() == ["FAIL"] * FAIL_STREAK
    assert table["fail_reason"].str.contains("no evaluation finished").all()
    assert not (tmp_path / "run" / "best").exists()


def test_a_time_budget_stops_the_running_trial_and_keeps_it(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    result = pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid),
                          out=tmp_path / "run", budget="4s", space=NARROW,
                          fixed={"epochs": 1000, "patience": None, "threads": 1}, precision="fp32")
    table = result.trials
    assert len(table) == 1
    row = table.iloc[0]
    assert row["state"] == "COMPLETE" and row["stop_reason"] == DEADLINE
    assert 0 < row["epochs"] < 1000 and math.isfinite(row["value"])
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    assert result.best_trial == 0


def test_data_errors_propagate_before_any_trial(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["good", "fine", "great"], "label": ["pos"] * 3}).to_csv(bad, index=False)
    result = cli("tune", "--model", tiny_model_dir, "--train", bad, "--out", tmp_path / "run",
                 "--budget", "2trials")
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "run" / "study.db").exists()
    assert not (tmp_path / "run" / "pretune.yaml").exists()


def test_interrupted_marker_is_not_counted():
    from pretune.search.study import counted

    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                      user_attrs={"fail_reason": INTERRUPTED})
    assert not counted(trial)
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                      user_attrs={"fail_reason": "RuntimeError: x"})
    assert counted(trial)


def test_trials_share_the_run_directorys_caches(tiny_model_dir, tmp_path):
    """Tokenized data and frozen features are made by the first trial and reused by the rest,
    also by a later start of the same search."""
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    common = dict(model=tiny_model_dir, train=str(train), valid=str(valid), out=out,
                  space=NARROW, fixed={"epochs": 1, "threads": 1, "transfer": "linear_probe"},
                  pruner="none", precision="fp32", refit=False)
    pretune.tune(budget="3trials", **common)
    cache = out / "cache"
    assert len(list(cache.glob("tokens-*.npz"))) == 2  # train and valid, once for 3 trials
    assert len(list(cache.glob("features-*.safetensors"))) == 2
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    pretune.tune(budget="5trials", **common)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before  # nothing redone
    depths = [t.user_attrs.get("feature_depth") for t in trials_of(out)]
    assert depths == [2] * 5


def test_a_data_fraction_runs_each_epoch_on_part_of_the_rows_and_a_continued_search_keeps_it(
        tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")  # 48 training rows
    out = tmp_path / "run"
    args = ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid, "--out", out,
            "--space", space_file(tmp_path / "s.yaml", {**NARROW, "batch_size": {"choices": [8]}}),
            "--fixed", "epochs=2", "--fixed", "threads=1", "--precision", "fp32",
            "--no-lr-range-test", "--pruner", "none"]
    first = cli(*args, "--budget", "1trials", "--data-fraction", "0.5")
    assert first.exit_code == 0, first.output
    again = cli(*args, "--budget", "2trials")  # no --data-fraction: the one it started with
    assert again.exit_code == 0, again.output
    plan = yaml.safe_load((out / "plan.yaml").read_text())["plan"]
    assert plan["data_fraction"] == 0.5
    for t in trials_of(out):
        # 2 epochs of half the 6 batches of 8: 6 steps, one pass over the rows in all.
        assert t.user_attrs["settings"]["data_fraction"] == 0.5
        assert (t.user_attrs["steps"], t.user_attrs["epochs"]) == (6, 2.0)
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert best["settings"]["train"]["data_fraction"] == 0.5  # retraining from it trains the same way
    other = cli(*args, "--budget", "3trials", "--data-fraction", "1")
    assert other.exit_code == 2 and "data_fraction" in other.output.replace("-", "_")



def test_the_first_trial_starts_even_when_it_cannot_reach_an_evaluation_before_the_deadline(
        tiny_model_dir, tmp_path, monkeypatch):
    from pretune.search import planning

    train, valid = data_files(tmp_path / "data")
    # As on large data: a trial needs longer than the whole budget to reach its first
    # evaluation. The first one runs anyway (the deadline would stop and evaluate it); once
    # there is a model, no trial starts that could not report in time.
    monkeypatch.setattr(planning, "first_eval_seconds", lambda plan, evals: 10_000.0)
    out = tmp_path / "run"
    result = cli("tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
                 "--out", out, "--budget", "10m", "--space", space_file(tmp_path / "s.yaml", NARROW),
                 "--fixed", "epochs=1", "--fixed", "threads=1", "--precision", "fp32",
                 "--no-lr-range-test")
    assert result.exit_code == 0, result.output
    assert [t.state.name for t in trials_of(out)] == ["COMPLETE"]
    assert (out / "best" / "model.safetensors").is_file()
    text = " ".join(result.output.split())
    assert "stopped with time left" in text and "first evaluation (about 10000s)" in text


def test_the_plan_follows_the_measured_trial_time(tiny_model_dir, tmp_path, monkeypatch):
    from pretune.search import planning

    train, valid = data_files(tmp_path / "data")
    # The first estimate is far too slow (as the range test's few steps were on SST-2): no
    # pruner, and after one trial no other would be started, as none seems to reach its first
    # evaluation in time. Once the first trial has run, its measured time replaces the estimate.
    monkeypatch.setattr(planning, "trial_seconds", lambda *args: 10_000.0)
    out = tmp_path / "run"
    result = cli("tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
                 "--out", out, "--budget", "10m,3trials", "--space",
                 space_file(tmp_path / "s.yaml", NARROW), "--fixed", "epochs=1",
                 "--fixed", "threads=1", "--precision", "fp32", "--no-lr-range-test")
    assert result.exit_code == 0, result.output
    assert [t.state.name for t in trials_of(out)] == ["COMPLETE"] * 3
    plan = yaml.safe_load((out / "plan.yaml").read_text())["plan"]
    assert plan["trial_seconds"] < 100 and plan["full_trials"] > planning.FEW_TRIALS
    assert plan["pruner"] == "asha" and "measured" in plan["reason"]
