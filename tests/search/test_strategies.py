"""Strategies by name, the samplers and pruners they build, and a continued search keeping one."""

from __future__ import annotations

import types

import optuna
import pytest
import yaml

from pretune.config import STRATEGIES, Budget, RunConfig, TuneConfig
from pretune.errors import ConfigError
from pretune.search import planning, strategies
from pretune.search.space import DEFAULT, DEFAULT_SPACE, resolve_space
from pretune.search.strategies import Fidelity, build, for_run, resolve

from .helpers import NARROW, cli, data_files, space_file

FIDELITY = Fidelity(min_resource=100, max_resource=500)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_named_strategy_builds_its_sampler_and_pruner(name):
    strategy = resolve(name)
    sampler, pruner = build(strategy, 0, FIDELITY)
    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    assert isinstance(sampler, kinds[strategy.sampler])
    pruners = {"hyperband": optuna.pruners.HyperbandPruner,
               "asha": optuna.pruners.SuccessiveHalvingPruner,
               "median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}
    assert isinstance(pruner, pruners[strategy.pruner])


def test_auto_is_the_measured_default_and_keeps_its_name():
    auto = resolve("auto")
    assert auto.name == "auto"
    chosen = strategies.CANDIDATES[strategies.AUTO]
    assert (auto.sampler, auto.pruner, auto.first_rung, auto.startup) == (
        chosen.sampler, chosen.pruner, chosen.first_rung, chosen.startup)
    assert resolve(None) == auto


def test_sampler_and_pruner_replace_a_part_of_the_strategy():
    assert resolve("tpe", pruner="hyperband").name == "hyperband"
    assert resolve("random", pruner="hyperband").name == "random-hyperband"
    odd = resolve("random", pruner="median")
    assert (odd.sampler, odd.pruner) == ("random", "median")


@pytest.mark.parametrize("kw, word", [({"strategy": "bayes"}, "strategy"),
                                      ({"sampler": "cmaes"}, "sampler"),
                                      ({"pruner": "patient"}, "pruner")])
def test_unknown_names_are_config_errors_that_list_the_choices(kw, word):
    with pytest.raises(ConfigError, match=f"{word} must be one of"):
        resolve(kw.pop("strategy", "auto"), **kw)


def test_no_pruner_judges_a_trial_before_min_resource():
    """Each trial looks far worse than the earlier ones at half an epoch (step 50, a warmup
    dip) and somewhat worse from step 100 on: pruners stop some, none before step 100."""
    for name in ("hyperband", "asha", "median"):
        study = optuna.create_study(pruner=build(resolve(name), 0, FIDELITY)[1],
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for number in range(12):
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            for step in range(50, 501, 50):
                trial.report(1000.0 + number if step < 100 else float(number), step)
                if trial.should_prune():
                    assert step >= FIDELITY.min_resource, (name, number, step)
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, float(number))
        assert any(t.state.name == "PRUNED" for t in study.trials), name


def test_a_continued_search_keeps_the_strategy_it_started_with():
    started = {"strategy": "random", "sampler": "random", "pruner": "none"}
    assert for_run(TuneConfig(), started) == resolve("random")
    assert for_run(TuneConfig(strategy="asha"), started) == resolve("asha")  # a mismatch later
    # "auto" recorded with the pair it meant then stays that pair.
    old_auto = {"strategy": "auto", "sampler": "tpe", "pruner": "asha"}
    kept = for_run(TuneConfig(), old_auto)
    assert (kept.name, kept.sampler, kept.pruner) == ("auto", "tpe", "asha")
    assert for_run(TuneConfig(), None) == resolve("auto")


def test_the_plan_judges_from_the_first_rung_and_auto_does_not_prune_a_few_trials():
    context = RunConfig().flat()
    kw = dict(train_rows=1000, valid_rows=100, evals_per_epoch=2)
    many = planning.make_plan(resolve("auto"), Budget(seconds=600), DEFAULT_SPACE, context,
                              seconds_per_example=0.001, **kw)
    assert many.pruner == resolve("auto").pruner
    # auto judges from 6% of the longest trial (5 epochs), once the first evaluation (half an
    # epoch) is in.
    assert (many.min_resource, many.max_resource) == (50, 500)
    early = planning.make_plan(strategies.CANDIDATES["tpe10+asha@0.06"], Budget(seconds=600),
                               DEFAULT_SPACE, context, seconds_per_example=0.001, **kw)
    assert early.min_resource == 50  # 6% of 500 steps waits for the first evaluation
    often = planning.make_plan(strategies.CANDIDATES["tpe10+asha@0.06"], Budget(seconds=600),
                               DEFAULT_SPACE, context, seconds_per_example=0.001,
                               **{**kw, "evals_per_epoch": 10})
    assert often.min_resource == 30  # evaluated every 10 steps: the rung itself
    assert many.trial_seconds == pytest.approx(0.001 * 3 * (1000 + 2 * 100 / 3))
    assert many.full_trials == pytest.approx(600 / many.trial_seconds)
    few = planning.make_plan(resolve("auto"), Budget(seconds=600), DEFAULT_SPACE, context,
                             seconds_per_example=0.1, **kw)
    assert few.full_trials < planning.FEW_TRIALS and few.pruner == "none"
    named = planning.make_plan(resolve("asha"), Budget(seconds=600), DEFAULT_SPACE, context,
                               seconds_per_example=0.1, **kw)
    assert named.pruner == "asha"  # a strategy the user named runs as named
    pinned = planning.make_plan(resolve("auto"), Budget(trials=5), (), {**context, "epochs": 0.5},
                                seconds_per_example=None, **kw)
    assert (pinned.min_resource, pinned.max_resource) == (50, 50) and pinned.trial_seconds is None
    assert "not measured" in pinned.message()


def test_the_plan_keeps_all_rows_unless_a_data_fraction_is_given():
    context = RunConfig().flat()
    kw = dict(valid_rows=1000, evals_per_epoch=2, seconds_per_example=0.01)
    auto = resolve("auto")
    # 60,000 rows, 3 epochs at 0.01 s an example: one trial on all rows takes 1,820 s.
    large = planning.make_plan(auto, Budget(seconds=600), DEFAULT_SPACE, context,
                               train_rows=60_000, **kw)
    assert large.data_fraction == 1.0 and "Each epoch" not in large.message()
    assert large.full_trials == pytest.approx(600 / 1820)
    given = planning.make_plan(auto, Budget(seconds=600), DEFAULT_SPACE, context,
                               train_rows=60_000, fraction=0.1, **kw)
    assert given.data_fraction == 0.1
    assert given.trial_seconds == pytest.approx(0.01 * 3 * (6000 + 2 * 1000 / 3))
    assert "Each epoch of a trial runs on 0.1 of the training rows (about 6,000 of 60,000)" \
        in given.message()


def test_on_data_too_large_for_the_budget_the_screening_fraction_fits_six_trials_in_half():
    budget = Budget(seconds=600)
    # 60,000 rows, 1,000 validation rows, 3 epochs evaluated twice each, 0.01 s an example:
    # a trial on all rows takes 1,820 s, more than the whole budget.
    kw = dict(valid_rows=1000, epochs=3.0, evals_per_epoch=2, share=0.5)
    fraction = planning.screening_fraction(budget, 0.01, 60_000, **kw)
    # six trials in 300 s: 50 s each, of which the evaluations take 20 s; 1,000 rows an epoch
    assert fraction == pytest.approx(1000 / 60_000, rel=0.01)
    trial = planning.trial_seconds(0.01, round(fraction * 60_000), 1000, 3.0, 2)
    assert trial * planning.SCREEN_TRIALS == pytest.approx(0.5 * 600, rel=0.01)
    longer = planning.screening_fraction(Budget(seconds=1200), 0.01, 60_000, **kw)
    assert longer == pytest.approx(2667 / 60_000, rel=0.01)  # 100 s a trial, 80 s training
    # a screening epoch runs on MIN_SCREEN_ROWS at least, however short the budget
    assert planning.screening_fraction(Budget(seconds=60), 0.01, 60_000, **kw) == \
        pytest.approx(planning.MIN_SCREEN_ROWS / 60_000, rel=0.01)
    # 182 s a trial on all rows: six do not fit 300 s, six of 50 s on 16,000 rows do
    assert planning.screening_fraction(budget, 0.001, 60_000, **kw) == pytest.approx(
        16_000 / 60_000, rel=0.01)
    # six trials on all rows fit half the budget, or nothing is known: all rows
    assert planning.screening_fraction(budget, 0.0001, 60_000, **kw) is None
    assert planning.screening_fraction(budget, None, 60_000, **kw) is None
    assert planning.screening_fraction(Budget(trials=5), 0.01, 60_000, **kw) is None
    assert planning.screening_fraction(Budget(seconds=30), 0.01, 900, **kw) is None  # the floor


def test_the_lr_range_moves_only_when_the_user_left_it_alone():
    dims, pinned = resolve_space(None, None, RunConfig())
    assert planning.lr_is_free(dims, None, pinned)
    centered = {d.name: d for d in planning.center_lr(dims, 2e-4)}
    assert (centered["lr"].low, centered["lr"].high, centered["lr"].log) == (5e-5, 8e-4, True)
    assert centered["batch_size"] == DEFAULT["batch_size"]
    assert planning.center_lr(dims, None) == dims
    spec = {"lr": {"low": 1e-5, "high": 2e-4, "log": True}}
    given, _ = resolve_space(spec, None, RunConfig())
    assert not planning.lr_is_free(given, spec, {})
    fixed_dims, fixed = resolve_space(None, {"lr": "1e-4"}, RunConfig())
    assert not planning.lr_is_free(fixed_dims, None, fixed)


def test_the_command_line_keeps_a_strategy_and_refuses_another(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    args = ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid, "--out", out,
            "--space", space_file(tmp_path / "s.yaml", NARROW), "--fixed", "epochs=1",
            "--fixed", "threads=1", "--precision", "fp32", "--no-lr-range-test"]
    first = cli(*args, "--budget", "1trials", "--strategy", "random")
    assert first.exit_code == 0, first.output
    again = cli(*args, "--budget", "2trials")  # no --strategy: the one it started with
    assert again.exit_code == 0, again.output
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert (record["tune"]["strategy"], record["tune"]["sampler"]) == ("random", "random")
    other = cli(*args, "--budget", "3trials", "--strategy", "tpe")
    assert other.exit_code == 2
    assert "started with strategy 'random'" in other.output and "'tpe'" in other.output


def test_no_trial_starts_without_time_to_reach_its_first_evaluation():
    from pretune.search.planning import Plan, first_eval_seconds

    plan = Plan(trial_seconds=60.0, full_trials=5.0, epochs=3.0, max_epochs=5.0, pruner="none",
                min_resource=100, max_resource=500, reason="")
    assert first_eval_seconds(plan, 2) == 10.0  # 60 s / (3 epochs x 2 evaluations)
    unmeasured = Plan(trial_seconds=None, full_trials=None, epochs=3.0, max_epochs=5.0,
                      pruner="none", min_resource=100, max_resource=500, reason="")
    assert first_eval_seconds(unmeasured, 2) == 0.0


def _ran(seconds, epochs):
    return types.SimpleNamespace(user_attrs={"seconds": seconds, "epochs": epochs})


def test_the_plan_is_made_again_from_the_trials_measured_times():
    context = RunConfig().flat()
    auto = resolve("auto")
    # The range test's pace says a 3-epoch trial takes 300 s: 2 fit in 10 minutes, no pruner.
    plan = planning.make_plan(auto, Budget(seconds=600), DEFAULT_SPACE, context,
                              seconds_per_example=0.1, train_rows=1000, valid_rows=0,
                              evals_per_epoch=2)
    assert plan.trial_seconds == pytest.approx(300) and plan.pruner == "none"
    assert planning.remeasure(plan, auto, Budget(seconds=600), []) is None
    # A trial that trained a quarter of an epoch says nothing; the others run 10 s an epoch
    # (the median, not the mean: one slow trial does not move it).
    trials = [_ran(1.0, 0.25), _ran(20, 2), _ran(30, 3), _ran(400, 4)]
    assert planning.measured_trial_seconds(trials, 3) == pytest.approx(30)
    again = planning.remeasure(plan, auto, Budget(seconds=600), trials)
    assert again.trial_seconds == pytest.approx(30) and again.full_trials == pytest.approx(20)
    assert again.pruner == auto.pruner and "measured" in again.reason
    # Within REPLAN_CHANGE of the estimate nothing changes; a named strategy keeps its pruner.
    assert planning.remeasure(again, auto, Budget(seconds=600), [_ran(33, 3)]) is None
    slow = planning.remeasure(again, auto, Budget(seconds=600), [_ran(300, 3)])
    assert slow.pruner == "none" and slow.full_trials == pytest.approx(2)
    named = planning.make_plan(resolve("tpe"), Budget(seconds=600), DEFAULT_SPACE, context,
                               seconds_per_example=0.1, train_rows=1000, valid_rows=0,
                               evals_per_epoch=2)
    assert planning.remeasure(named, resolve("tpe"), Budget(seconds=600), trials).pruner == "none"
