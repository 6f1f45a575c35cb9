"""Seed-robust final pick: the reserve, the candidates, and a whole search that uses them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import yaml

import pretune
from pretune.config import Budget
from pretune.search import final_pick

from .helpers import NARROW, data_files


def trial(number, value, params, state="COMPLETE", **attrs):
    return SimpleNamespace(number=number, value=value, params=params,
                           state=SimpleNamespace(name=state), user_attrs=attrs)


def test_the_reserve_fits_inside_a_quarter_of_the_budget_or_is_not_kept():
    assert final_pick.reserve(Budget(trials=12), None, 3, 1).trials == 3
    assert final_pick.reserve(Budget(trials=10), None, 3, 1).trials == 2  # 3 > 2.5: 2 fit
    assert not final_pick.reserve(Budget(trials=7), None, 3, 1).active  # 1.75: fewer than 2
    assert not final_pick.reserve(Budget(trials=12), None, 3, 2).active  # 3 trials: 1 setting
    assert not final_pick.reserve(Budget(trials=12), None, 3, 1, trials_done=10).active
    assert final_pick.reserve(Budget(trials=12), None, 3, 1, trials_done=9).trials == 2
    timed = final_pick.reserve(Budget(seconds=600), 40.0, 3, 1)
    assert (timed.trials, timed.seconds) == (0, 120.0)
    shrunk = final_pick.reserve(Budget(seconds=600), 60.0, 3, 1)  # 180 > 150: 2 of 3 fit
    assert (shrunk.trials, shrunk.seconds) == (0, 120.0)
    assert not final_pick.reserve(Budget(seconds=300), 60.0, 3, 1).active  # 75 s: 1 fits
    assert not final_pick.reserve(Budget(seconds=600), None, 3, 1).active  # no estimate
    assert not final_pick.reserve(Budget(trials=100), None, 0, 1).active


def test_candidates_are_the_best_distinct_settings_with_all_their_runs():
    a, b, c = {"lr": 1}, {"lr": 2}, {"lr": 3}
    trials = [trial(0, 0.80, a), trial(1, 0.90, b), trial(2, 0.70, c), trial(3, 0.85, a),
              trial(4, 0.60, b, seed_of=1), trial(5, 0.95, c, state="PRUNED"),
              trial(6, 0.88, a)]  # the same settings sampled again
    found = final_pick.candidates(trials, "maximize", top=2)
    assert [x.trial for x in found] == [1, 6]
    assert found[0].runs == {1: 0.90, 4: 0.60}
    assert found[1].runs == {6: 0.88, 0: 0.80, 3: 0.85}
    assert found[0].mean == pytest.approx(0.75)
    assert found[0].std == pytest.approx(math.sqrt(2 * 0.15 ** 2))
    chosen = final_pick.choose(found, "maximize")
    assert chosen.trial == 6  # the best mean, not the best single run (trial 1)
    assert final_pick.choose(found, "minimize").trial == 1
    # A setting run once is no evidence: with one repeated setting there is no choice.
    once = final_pick.candidates(trials[:4], "maximize", top=2)
    assert [len(c.runs) for c in once] == [1, 2] and final_pick.choose(once, "maximize") is None


def test_only_the_settings_that_fit_in_the_time_left_are_re_run():
    assert final_pick.fitting(3, 1, 10.0, 25.0) == 2
    assert final_pick.fitting(3, 2, 10.0, 25.0) == 1
    assert final_pick.fitting(3, 1, None, 5.0) == 3
    assert final_pick.fitting(3, 1, 10.0, None) == 3


def test_a_search_with_room_re_runs_its_best_settings_and_keeps_a_run_of_the_winner(
        tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    result = pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid), out=out,
                          budget="8trials", space=NARROW, metric="loss", strategy="random",
                          fixed={"epochs": 1, "threads": 1}, precision="fp32", seed_check=2,
                          lr_range_test=False, priors=False)
    table = result.trials
    assert len(table) == 8
    reruns = table[table["seed_of"].notna()]
    assert len(reruns) == 2  # the reserve: 2 settings x 1 re-run, inside the 8 trials
    assert set(reruns["number"]) == {6, 7} and (reruns["state"] == "COMPLETE").all()
    check = result.seed_check
    assert check is not None and len(check["candidates"]) == 2
    for cand in check["candidates"]:
        assert cand["n"] == 2 and cand["std"] >= 0
        values = list(cand["runs"].values())
        assert cand["mean"] == pytest.approx(sum(values) / 2)
    chosen = next(c for c in check["candidates"] if c["trial"] == check["chosen"])
    assert chosen["mean"] == min(c["mean"] for c in check["candidates"])  # loss: lower wins
    # best/ is a run of the chosen settings, and its best one that has a model.
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["params"] == chosen["params"]
    assert any(meta["metrics"]["loss"] == pytest.approx(v) for v in chosen["runs"].values())
    assert result.best_trial in {int(n) for n in chosen["runs"]}
    assert result.best_params == chosen["params"]
    assert not (out / "seed_check").exists()
    assert yaml.safe_load((out / "plan.yaml").read_text())["seed_check"]["chosen"] == check["chosen"]
