"""Reading a search back from its run directory: trials, curves, importance, best model."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
import yaml

from pretune.errors import ConfigError
from pretune.search.history import MIN_TRIALS_FOR_IMPORTANCE, param_importance, read_history


def test_history_matches_the_study_and_best_model(tiny_search_run):
    out, _, valid = tiny_search_run
    history = read_history(out)
    study = optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()

    assert history.metric == "loss" and history.direction == "minimize"
    assert list(history.trials["number"]) == [t.number for t in trials]
    assert sum(history.counts.values()) == len(trials) == 4
    # Each curve is the trial's reported values, with steps (percent of an epoch) in epochs.
    for curve, trial in zip(history.curves, trials):
        assert curve.number == trial.number and curve.state == trial.state.name
        assert curve.values == [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert curve.epochs == [s / 100 for s in sorted(trial.intermediate_values)]
    complete = [c for c in history.curves if c.state == "COMPLETE"]
    assert complete and all(c.epochs[-1] == pytest.approx(2.0) for c in complete)

    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert history.best_trial == meta["trial"]
    assert history.best_value == pytest.approx(meta["metrics"]["loss"])
    assert history.best_params == meta["params"]
    assert history.trial_seconds > 0 and history.wall_seconds > 0


def test_best_models_validation_predictions_are_saved_and_true(tiny_search_run):
    out, _, valid = tiny_search_run
    history = read_history(out, importance=False)
    predictions = history.predictions
    labels = pd.read_csv(valid)["label"].astype(str)
    assert predictions is not None and len(predictions) == len(labels)
    assert (predictions["trial"] == history.best_trial).all()
    assert sorted(predictions["label"]) == sorted(labels)
    probs = predictions[["prob_negative", "prob_positive"]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx([1.0] * len(probs), abs=1e-5)
    accuracy = (predictions["label"] == predictions["prediction"]).mean()
    assert accuracy == pytest.approx(history.best_metrics["accuracy"])


def test_best_so_far_never_gets_worse(tiny_search_run):
    out, _, _ = tiny_search_run
    history = read_history(out, importance=False)
    frame = history.best_so_far()
    assert len(frame) == history.counts.get("COMPLETE", 0)
    assert frame["best"].is_monotonic_decreasing  # loss is minimized
    assert frame["best"].iloc[-1] == pytest.approx(frame["value"].min())
    assert (frame["elapsed_s"].diff().dropna() >= 0).all()


def test_ranked_puts_the_best_complete_trial_first(tiny_search_run):
    out, _, _ = tiny_search_run
    history = read_history(out, importance=False)
    ranked = history.ranked()
    complete = ranked[ranked["state"] == "COMPLETE"]
    assert list(complete["value"]) == sorted(complete["value"])
    assert int(ranked["number"].iloc[0]) == history.best_trial


def _study_with(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10 ** -(2 + i % 3), "batch_size": [8, 16][i % 2]},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
                           "batch_size": optuna.distributions.CategoricalDistribution([8, 16])},
            value=value))
    return study


def test_importance_needs_enough_complete_trials():
    scores, note = param_importance(_study_with([0.5, 0.6]))
    assert scores is None
    assert f"at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials" in note and "has 2" in note


def test_importance_sums_to_one_over_searched_parameters():
    # The score follows the learning rate only; fANOVA should say so.
    values = [0.9 if (i % 3) == 0 else 0.5 for i in range(12)]
    scores, note = param_importance(_study_with(values))
    assert set(scores) == {"lr", "batch_size"}
    assert math.isclose(sum(scores.values()), 1.0, rel_tol=1e-6)
    assert scores["lr"] > scores["batch_size"]
    assert "fANOVA" in note


def test_not_a_run_directory_is_a_one_sentence_error(tmp_path, tiny_search_run):
    with pytest.raises(ConfigError, match="does not exist"):
        read_history(tmp_path / "missing")
    with pytest.raises(ConfigError, match="has no pretune.yaml"):
        read_history(tmp_path)
    out, _, _ = tiny_search_run
    with pytest.raises(ConfigError, match="not a search's record"):
        read_history(out / "best")  # a model directory has a pretune.yaml too


def test_a_study_in_another_storage_is_found_through_pretune_yaml(tiny_search_run, tmp_path):
    import shutil

    out, _, _ = tiny_search_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    elsewhere = tmp_path / "elsewhere.db"
    (run / "study.db").rename(elsewhere)
    record = yaml.safe_load((run / "pretune.yaml").read_text())
    record["tune"]["storage"] = f"sqlite:///{elsewhere}"
    (run / "pretune.yaml").write_text(yaml.safe_dump(record))
    history = read_history(run, importance=False)
    assert history.storage == f"sqlite:///{elsewhere}" and len(history.trials) == 4

    record["tune"]["study_name"] = "another"
    (run / "pretune.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(ConfigError, match="has no study named 'another'"):
        read_history(run)
