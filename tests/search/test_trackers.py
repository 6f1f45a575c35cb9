"""--log-to: each trial of a real search recorded as a run of MLflow or TensorBoard."""

from __future__ import annotations

import optuna
import pytest

from pretune.errors import ConfigError, MissingExtraError
from pretune.search.trackers import make_trackers


def _trials(out):
    return optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}").trials


def test_mlflow_has_one_run_per_trial_with_params_and_curve(tiny_search_run):
    pytest.importorskip("mlflow", reason="needs the mlflow extra (pip install 'pretune[mlflow]')")
    from mlflow.tracking import MlflowClient

    out, _, _ = tiny_search_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pretune")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trials = _trials(out)
    assert sorted(runs) == sorted(f"trial {t.number}" for t in trials)
    for t in trials:
        run = runs[f"trial {t.number}"]
        assert run.info.status == "FINISHED" and run.data.tags["pretune.state"] == t.state.name
        assert {k: float(v) for k, v in run.data.params.items()} == pytest.approx(
            {k: float(v) for k, v in t.params.items()})
        curve = client.get_metric_history(run.info.run_id, "valid_loss")
        assert len(curve) == len(t.intermediate_values)  # one point per evaluation
        assert [m.value for m in sorted(curve, key=lambda m: m.step)] == pytest.approx(
            [t.intermediate_values[s] for s in sorted(t.intermediate_values)])
        assert run.data.metrics["final_loss"] == pytest.approx(t.value)


def test_tensorboard_has_one_log_directory_per_trial(tiny_search_run):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra (pip install 'pretune[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = tiny_search_run
    trials = _trials(out)
    for t in trials:
        events = EventAccumulator(str(out / "tensorboard" / f"trial-{t.number:04d}"))
        events.Reload()
        valid = [s.value for s in events.Scalars("valid/loss")]
        assert valid == pytest.approx([t.intermediate_values[s] for s in sorted(t.intermediate_values)])
        steps = [s.step for s in events.Scalars("train/loss")]
        assert steps == sorted(steps) and steps[-1] == t.user_attrs["steps"]


def test_an_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--log-to must be one of mlflow, tensorboard, but got 'wandb'"):
        make_trackers(["wandb"], tmp_path)


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_mlflow(name, *args, **kwargs):
        if name.startswith("mlflow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_mlflow)
    with pytest.raises(MissingExtraError, match=r"pip install 'pretune\[mlflow\]'"):
        make_trackers(["mlflow"], tmp_path)
