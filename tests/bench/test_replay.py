"""bench/replay.py: the table's mapping, failed curves and cost accounting, on small tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "replay.py"


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("bench_replay", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_replay"] = module
    spec.loader.exec_module(module)
    return module


def test_points_are_log_scaled_to_the_unit_cube_with_betas_as_one_minus_beta(replay):
    rows = pd.DataFrame({p: [1e-4, 1e-3, 1e-2] for p in replay.PARAMS})
    rows["beta1"] = [0.9, 0.99, 0.999]  # 1 - beta: 1e-1, 1e-2, 1e-3
    points = replay.normalized_points(rows)
    assert points.shape == (3, 8)
    np.testing.assert_allclose(points[:, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(points[:, 1], [1.0, 0.5, 0.0])


def test_a_point_maps_to_the_nearest_row_not_evaluated_yet(replay):
    points = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0]])
    mapper = replay.Mapper(points)
    assert mapper.take(np.array([0.01, 0.0])) == 0
    assert mapper.take(np.array([0.01, 0.0])) == 1  # row 0 is taken: the next nearest
    assert mapper.take(np.array([0.01, 0.0])) == 2
    assert len(mapper) == 0
    with pytest.raises(IndexError):
        mapper.take(np.array([0.0, 0.0]))


def task_of(replay, curves):
    curves = np.asarray(curves, dtype=float)
    points = np.linspace(0, 1, len(curves))[:, None].repeat(len(replay.PARAMS), axis=1)
    final = curves[~np.isnan(curves).any(axis=1), -1]
    return replay.Task("toy", points, curves, float(final.min()), float(np.median(final)))


def test_a_nan_curve_fails_its_trial_and_costs_the_checkpoints_it_used(replay, monkeypatch):
    flat = np.full(replay.CHECKPOINTS, 0.5)
    diverged = np.full(replay.CHECKPOINTS, 0.3)
    diverged[10:] = np.nan  # the 11th checkpoint is NaN
    good = np.full(replay.CHECKPOINTS, 0.2)
    task = task_of(replay, [flat, diverged, good, flat])
    # A sampler that walks the rows in order: row i at trial i.
    walk = iter(np.linspace(0, 1, 4))
    monkeypatch.setattr(replay, "contender", lambda name, seed: (
        optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner()))
    # Every coordinate of trial i is the i-th point of the walk.
    values = {}

    def suggest(self, name, low, high):
        if name == replay.PARAMS[0]:
            values[self.number] = float(next(walk))
        return values[self.number]

    monkeypatch.setattr(optuna.trial.Trial, "suggest_float", suggest)
    row = replay.replay(task, "random", 0, budgets=[2, 3, 100])
    assert (row["trials"], row["failed"], row["pruned"]) == (4, 1, 0)
    # Costs: 51 + 11 + 51 + 51 checkpoints; the table ran out before the budget of 100 curves.
    assert row["cost_curves"] == pytest.approx((3 * 51 + 11) / 51)
    assert row["regret@2"] == pytest.approx(1.0)  # only row 0 (0.5, the median) finished
    assert row["regret@3"] == pytest.approx(0.0)  # row 2 (0.2, the best) is within 3 curves
    assert row["regret@100"] == pytest.approx(0.0)


def test_regret_is_zero_at_the_best_row_and_one_at_the_median(replay):
    task = task_of(replay, [np.full(51, v) for v in (0.1, 0.4, 0.7)])
    assert task.regret(0.1) == 0.0
    assert task.regret(0.4) == pytest.approx(1.0)
    assert task.regret(None) == 1.0


def test_the_pretune_contender_is_built_by_pretunes_strategy_factory(replay, monkeypatch):
    from pretune.search import strategies

    calls = []
    real = strategies.build

    def spy(strategy, seed, fidelity):
        calls.append((strategy.name, fidelity))
        return real(strategy, seed, fidelity)

    monkeypatch.setattr(strategies, "build", spy)
    replay.contender("pretune", 3)
    auto = strategies.resolve("auto")
    assert calls == [("auto", auto.fidelity(replay.CHECKPOINTS))]
    assert calls[0][1].min_resource == round(0.06 * replay.CHECKPOINTS)  # 6% of the curve
    name = next(iter(strategies.CANDIDATES))
    replay.contender(name, 3)  # every candidate default is built by the same factory
    assert calls[-1] == (name, strategies.CANDIDATES[name].fidelity(replay.CHECKPOINTS))


def test_the_shortcut_of_an_unpruned_study_gives_the_same_picks(replay):
    rng = np.random.default_rng(0)
    curves = rng.uniform(0.2, 0.8, size=(40, replay.CHECKPOINTS))
    curves[::7, 20:] = np.nan
    task = task_of(replay, curves)
    task.points = rng.uniform(size=task.points.shape)
    for name in ("random", "tpe"):
        fast = replay.replay(task, name, 1, [5, 20, 60])
        slow = replay.replay(task, name, 1, [5, 20, 60], shortcut=False)
        assert fast["trials"] <= slow["trials"]
        for key in ("regret@5", "regret@20", "regret@60", "failed", "cost_curves"):
            assert fast[key] == pytest.approx(slow[key]), (name, key)


def test_leave_one_task_out_scores_each_task_with_the_choice_made_without_it(replay):
    # "a" is best on tasks 1 and 2, "b" on task 3. Every fold chooses "a" (without task 1 or 2,
    # a's mean over the other two tasks is still lower), so task 3 is scored with a's regret.
    regrets = {("t1", "a"): 0.0, ("t1", "b"): 0.5, ("t2", "a"): 0.1, ("t2", "b"): 0.4,
               ("t3", "a"): 0.3, ("t3", "b"): 0.0, ("t1", "anchor"): 0.2,
               ("t2", "anchor"): 0.2, ("t3", "anchor"): 0.2}
    rows = pd.DataFrame([{"task": t, "contender": c, "seed": s, "regret@30": r, "regret@100": r}
                         for (t, c), r in regrets.items() for s in range(2)])
    held, picks = replay.leave_one_task_out(rows, [30, 100], ["a", "b"])
    assert picks == {"t1": "a", "t2": "a", "t3": "a"}
    out = held[held.contender == replay.HELD_OUT].groupby("task")["regret@30"].mean()
    assert out.to_dict() == {"t1": 0.0, "t2": 0.1, "t3": 0.3}  # t3: a's regret, not b's
    assert replay.choose(rows[rows.task == "t3"], [30, 100], ["a", "b"]) == "b"
    report = replay.loto_report(rows, [30, 100], ["anchor"], ["a", "b"])
    assert "HELD OUT" in report and "IN SAMPLE: a" in report
