"""best/'s recipe trained again on the training and validation rows at the end of a search."""

from __future__ import annotations

import shutil
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file

import pretune
from pretune.config import Budget, RunConfig
from pretune.data.task import Split, TaskData
from pretune.search import refit
from pretune.search.history import read_history

from .helpers import NARROW, cli, data_files, regression_rows, space_file


_OUTPUT: dict = {}  # what each search printed


def out_text(out) -> str:
    return _OUTPUT[out]


def _search(root, tiny_learner_dir, *extra) -> tuple:
    train, valid = data_files(root / "data")
    space = space_file(root / "space.yaml", NARROW)
    out = root / "run"
    result = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
                 "--budget", "3trials", "--out", out, "--space", space, "--fixed", "epochs=3",
                 "--precision", "fp32", "--fixed", "threads=1", "--keep", "2", "--no-priors",
                 "--no-report", *extra)
    assert result.exit_code == 0, result.output
    _OUTPUT[out] = result.output
    return out, train, valid


def _meta(directory) -> dict:
    return yaml.safe_load((directory / "pretune.yaml").read_text())


def _taken_at(training: dict) -> float:
    """The epoch a run's kept model was taken at."""
    return training["best_step"] / max(training["steps"], 1) * training["epochs"]


@pytest.fixture(scope="module")
def searched(tiny_learner_dir, tmp_path_factory):
    """A search that did not refit, to refit by hand."""
    return _search(tmp_path_factory.mktemp("refit"), tiny_learner_dir, "--no-refit")


def test_a_search_refits_best_by_default_and_records_what_it_did(tiny_learner_dir, tmp_path):
    out, train, valid = _search(tmp_path, tiny_learner_dir)
    rows, valid_rows = len(pd.read_csv(train)), len(pd.read_csv(valid))
    meta = _meta(out / "best")
    made_of = meta["made_of"]
    assert made_of["kind"] == "refit" and made_of["trials"] == [meta["trial"]]
    assert made_of["refit"]["rows"] == rows + valid_rows == meta["data"]["train_rows"]
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["refit"]["trial"] == meta["trial"]
    # the refit replaces soups and students, so the assembly built only the ensemble, after it
    assert {c["kind"] for c in plan["assembly"]["candidates"]} <= {"trial", "ensemble"}
    assert plan["assembly"]["chosen"] == "refit" and (out / "ensemble.yaml").is_file()
    # best/'s score is the held-out score of the trial whose recipe it is
    trials = pd.read_csv(out / "trials.csv").set_index("number")
    assert meta["metrics"]["accuracy"] == pytest.approx(trials.loc[meta["trial"], "value"])
    assert (out / "best" / "valid-predictions.csv").is_file()
    frame = pretune.predict(out, valid)
    assert len(frame) == valid_rows
    assert f"then refit: trial {meta['trial']}'s recipe" in out_text(out)
    final = read_history(out, importance=False).final  # the report's "final model" line
    assert f"trial {meta['trial']}'s recipe trained again on {rows + valid_rows}" in final


def test_refit_trains_the_recipe_on_both_splits_and_replaces_best(searched):
    out, train, valid = searched
    before = _meta(out / "best")
    source = _meta(out / "kept" / f"trial-{before['trial']:04d}")
    from pretune.data.task import load_task

    config = RunConfig.from_dict(source["settings"])
    task = load_task(config.data, 0)
    record = refit.refit(out, task, None, metric="accuracy")
    assert record is not None and record["trial"] == before["trial"]
    assert record["rows"] == len(task.train) + len(task.valid)
    assert record["epochs"] == refit.taken_at(source, config)
    after = _meta(out / "best")
    assert after["made_of"]["before"]["kind"] == before.get("made_of", {}).get("kind", "trial")
    assert after["settings"]["train"]["epochs"] == record["epochs"]
    assert after["settings"]["train"]["patience"] is None
    assert after["settings"]["train"]["seed"] == config.train.seed
    weights = load_file(str(out / "best" / "model.safetensors"))
    kept = load_file(str(out / "kept" / f"trial-{before['trial']:04d}" / "model.safetensors"))
    assert any(not np.array_equal(weights[k], kept[k]) for k in kept)
    # a second call finds the refit done, and says what it was
    assert refit.refit(out, task, None, metric="accuracy") == record


def test_refit_leaves_best_alone_when_the_time_left_is_too_short(searched, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(searched[0], out)
    shutil.rmtree(out / "best")
    shutil.copytree(next((out / "kept").iterdir()), out / "best")  # a trial's model, not refit
    before = (out / "best" / "model.safetensors").read_bytes()
    config = RunConfig.from_dict(_meta(out / "best")["settings"])
    from pretune.data.task import load_task

    task = load_task(config.data, 0)
    assert refit.refit(out, task, None, metric="accuracy", deadline=time.monotonic()) is None
    assert (out / "best" / "model.safetensors").read_bytes() == before
    assert not (out / "best.tmp-refit").exists()


def test_a_refit_slower_than_its_estimate_ends_its_schedule_in_time(searched, tmp_path,
                                                                     monkeypatch):
    from pretune.data.task import load_task
    from pretune.training import run

    out = tmp_path / "run"
    shutil.copytree(searched[0], out)
    shutil.rmtree(out / "best")  # a trial's model, as the search left it (another test refit it)
    # The trial whose model was taken latest: its refit has the most steps to cut.
    latest = max((out / "kept").iterdir(), key=lambda d: _taken_at(_meta(d)["training"]))
    shutil.copytree(latest, out / "best")
    config = RunConfig.from_dict(_meta(out / "best")["settings"])
    task = load_task(config.data, 0)
    # Its estimate fits the time left, but once under way it finds the time all but gone: it
    # ends after the steps that measure its pace, and is kept, not thrown away as cut.
    given, real_train = [], run.train

    def short_of_time(*args, seconds=None, **kwargs):
        given.append(seconds)
        return real_train(*args, seconds=1e-6, **kwargs)

    monkeypatch.setattr(run, "train", short_of_time)
    record = refit.refit(out, task, None, metric="accuracy", deadline=time.monotonic() + 600)
    assert record is not None and 0 < given[0] <= 600 * (1 + refit.GRACE)
    training = _meta(out / "best")["training"]
    assert training["planned_steps"] > training["steps"] == 6


def test_the_refit_epoch_is_where_the_trials_model_was_taken():
    config = RunConfig().with_settings({"epochs": 5})
    # steps 221 over 3.5 epochs: 63 a epoch; the soup's last checkpoint at step 189 = epoch 3
    soup = {"training": {"steps": 221, "epochs": 3.5079, "best_step": 126, "soup": [126, 158, 189]}}
    assert refit.taken_at(soup, config) == pytest.approx(3.0, abs=0.01)
    best = {"training": {"steps": 221, "epochs": 3.5079, "best_step": 126}}
    assert refit.taken_at(best, config) == pytest.approx(2.0, abs=0.01)
    assert refit.taken_at({}, config) == 5.0
    tuned = refit.recipe(config, 3.0, {"task": {"threshold": 0.3}})
    assert (tuned.train.epochs, tuned.train.patience, tuned.train.checkpoint_soup) == (3.0, None, 1)
    assert tuned.train.threshold == 0.3  # a multi-label threshold tuned on valid is kept fixed


def test_the_refit_data_is_the_training_rows_then_the_validation_rows():
    def split(words, tags):
        labels = np.empty(len(tags), dtype=object)
        labels[:] = [np.array(t) for t in tags]
        return Split([" ".join(w) for w in words], None, labels, words)

    task = TaskData(train=split([["a", "b"]], [[0, 1]]), valid=split([["c"]], [[2]]),
                    label_names=["O", "B-X", "I-X"], text_column="tokens", text_pair_column=None,
                    label_column="tags", fingerprint="f", valid_source="file", kind="token")
    both = refit.merged(task)
    assert both.train.words == [["a", "b"], ["c"]] and both.valid is task.valid
    assert [list(t) for t in both.train.labels] == [[0, 1], [2]]
    pairs = TaskData(train=Split(["x"], ["y"], np.array([1])),
                     valid=Split(["z"], ["w"], np.array([0])),
                     label_names=["0", "1"], text_column="a", text_pair_column="b",
                     label_column="label", fingerprint="f", valid_source="file")
    both = refit.merged(pairs)
    assert (both.train.texts, both.train.pairs, both.train.labels.tolist()) == (
        ["x", "z"], ["y", "w"], [1, 0])


def test_the_plan_keeps_time_for_the_refit_only_where_it_fits():
    budget = Budget.parse("10m")
    assert refit.reserve(budget, 40.0, 1.5, most=200.0) == pytest.approx(40 * 1.5 * refit.SLACK)
    assert refit.reserve(budget, 400.0, 1.5, most=200.0) == 0.0  # a refit longer than allowed
    assert refit.reserve(Budget.parse("5trials"), 40.0, 1.5, most=200.0) == 0.0


def test_the_assembly_keeps_no_time_where_fewer_than_two_trials_fit():
    from pretune.search import assemble

    budget = Budget.parse("10m")
    assert assemble.reserve(budget, 60.0, True, distill=False) == pytest.approx(6.0)  # tasting
    assert assemble.reserve(budget, 60.0, True) == pytest.approx(66.0)  # and a distillation
    assert assemble.reserve(budget, 310.0, True, distill=False) == 0.0  # one trial: nothing to assemble
    assert assemble.reserve(budget, 60.0, False) == 0.0


def test_a_refit_of_a_trial_on_a_fraction_runs_on_as_many_rows_as_the_time_allows():
    # the trial's pace of training: 30 s for 3 epochs, of which 6 s evaluating
    source = {"training": {"seconds": 30.0, "eval_seconds": 6.0, "epochs": 3.0}}
    needs = refit.estimate(source, 3.0, 1.0)
    assert needs == pytest.approx(24.0)
    assert refit.widened(0.01, needs, 240.0) == pytest.approx(0.01 * 240 / (24 * refit.SLACK),
                                                              rel=0.01)
    assert refit.widened(0.01, needs, 10_000.0) == 1.0  # all rows at most
    assert refit.widened(0.01, needs, 5.0) == 0.01  # never fewer rows than the trial's
    assert refit.widened(0.01, needs, float("inf")) == 0.01  # no time budget: the trial's
    assert refit.widened(1.0, needs, 240.0) == 1.0
    config = refit.recipe(RunConfig().with_settings({"data_fraction": 0.01}), 3.0, {}, 0.08)
    assert config.train.data_fraction == 0.08
    phrase = refit.rows_phrase({"rows": 68_221, "epochs": 3.0, "data_fraction": 0.08,
                                "trial_data_fraction": 0.01})
    assert phrase == ("0.08 of the 68,221 training and validation rows an epoch (about 5,458) "
                      "for 3 epochs (the trial ran on 0.01)")


def test_with_screen_a_search_on_large_data_screens_on_a_fraction_then_refits_on_more(
        tiny_learner_dir, tmp_path, monkeypatch):
    from pretune.search import planning, prepare

    measured = prepare.lr_range

    def slow_machine(*args, **kwargs):  # the range test's pace, as if a step took seconds
        found = measured(*args, **kwargs)
        return {**found, "seconds_per_example": 1.0}

    monkeypatch.setattr(prepare, "lr_range", slow_machine)
    monkeypatch.setattr(planning, "MIN_SCREEN_ROWS", 12)
    train, valid = data_files(tmp_path / "data")  # 48 training rows, 12 validation rows
    out = tmp_path / "run"
    args = ["tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
            "--out", out, "--space", space_file(tmp_path / "space.yaml", NARROW),
            "--fixed", "epochs=3", "--precision", "fp32", "--fixed", "threads=1",
            "--no-priors", "--no-report"]
    plain = cli(*args, "--out", tmp_path / "plain", "--budget", "20s,1trials")
    assert plain.exit_code == 0, plain.output  # no --screen: every trial on all rows
    assert yaml.safe_load((tmp_path / "plain" / "pretune.yaml").read_text())["tune"][
        "data_fraction"] is None
    result = cli(*args, "--budget", "20s,3trials", "--screen")
    assert result.exit_code == 0, result.output
    # one 3-epoch trial at a second an example takes minutes: the trials screen on 12 rows
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert record["tune"]["data_fraction"] == 0.25
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["plan"]["data_fraction"] == 0.25
    assert plan["plan"]["refit_seconds"] > 0.3 * 20  # the refit's whole share of the budget
    trials = optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert len(trials) == 3
    for t in trials:  # each epoch a quarter of the rows
        assert t.user_attrs["settings"]["data_fraction"] == 0.25
    # the trials took less than a second, so the time left allows the refit all the rows
    again = plan["refit"]
    assert (again["trial_data_fraction"], again["data_fraction"]) == (0.25, 1.0)
    best = _meta(out / "best")
    assert best["settings"]["train"]["data_fraction"] == 1.0
    assert best["data"]["train_rows"] == 48 + 12
    assert "then refit:" in result.output and "60 training and validation rows" in result.output
    # a continued search keeps the fraction its trials started with, --screen given or not
    assert cli(*args, "--budget", "20s,4trials").exit_code == 0
    assert yaml.safe_load((out / "plan.yaml").read_text())["plan"]["data_fraction"] == 0.25


def test_a_regression_refit_learns_the_scale_of_both_splits(tiny_learner_dir, tmp_path):
    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    regression_rows(64, 0).to_csv(train, index=False)
    regression_rows(24, 1).to_csv(valid, index=False)
    result = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
                 "--label-column", "price", "--budget", "2trials", "--out", tmp_path / "run",
                 "--space", space_file(tmp_path / "space.yaml", NARROW), "--fixed", "epochs=3",
                 "--pruner", "none", "--precision", "fp32", "--fixed", "threads=1",
                 "--no-priors", "--no-report")
    assert result.exit_code == 0, result.output
    meta = _meta(tmp_path / "run" / "best")
    both = pd.concat([pd.read_csv(train), pd.read_csv(valid)])["price"]
    assert meta["made_of"]["kind"] == "refit"
    assert meta["task"]["target_mean"] == pytest.approx(both.mean())  # the rows it learned
    preds = pretune.predict(tmp_path / "run", valid)["prediction"]
    assert abs(preds.mean() - both.mean()) < both.std()  # in the data's units
