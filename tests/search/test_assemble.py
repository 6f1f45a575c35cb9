"""The final model built from the whole search: kept trials, soups, the ensemble, distillation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import log_loss

import pretune
from pretune.config import TrainConfig
from pretune.training import ensemble
from pretune.training.objectives import Classification, Regression

from .helpers import NARROW, cli, data_files, space_file

TRIALS = 4
KEEP = 3
_ARGS: dict = {}  # the command that made each run directory


@pytest.fixture(scope="module")
def assembled(tiny_learner_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("assemble")
    train, valid = data_files(root / "data")
    # Trials that differ mostly by their seed, so that their models fall in one soup group.
    space = space_file(root / "space.yaml", {**NARROW, "lr": {"low": 6e-3, "high": 8e-3},
                                             "batch_size": {"choices": [8]}})
    out = root / "run"
    args = ["tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
            "--budget", f"{TRIALS}trials", "--out", out, "--space", space,
            "--fixed", "epochs=4", "--metric", "loss", "--pruner", "none",
            "--precision", "fp32", "--fixed", "threads=1", "--keep", str(KEEP),
            "--no-priors", "--no-report", "--no-refit"]  # best/ as the assembly left it
    result = cli(*args)
    assert result.exit_code == 0, result.output
    _ARGS[out] = args
    return out, valid


def _loss_of(frame: pd.DataFrame, valid) -> float:
    y = (pd.read_csv(valid)["label"] == "positive").astype(int).to_numpy()
    return log_loss(y, frame[["prob_negative", "prob_positive"]].to_numpy(), labels=[0, 1])


def test_the_best_trials_models_are_kept_and_no_more(assembled):
    out, _ = assembled
    trials = pd.read_csv(out / "trials.csv")
    best = trials.sort_values("value").number.head(KEEP).tolist()
    kept = sorted(int(p.name.split("-")[1]) for p in (out / "kept").iterdir())
    assert kept == sorted(best)
    for p in (out / "kept").iterdir():
        assert (p / "model.safetensors").is_file() and (p / "valid-outputs.npz").is_file()


def test_best_holds_the_best_candidate_and_says_what_it_is_made_of(assembled):
    out, valid = assembled
    plan = yaml.safe_load((out / "plan.yaml").read_text())["assembly"]
    kinds = [c["kind"] for c in plan["candidates"]]
    assert kinds[:2] == ["trial", "ensemble"]
    assert ("distilled" in kinds) == (len(plan["candidates"][1]["members"]) > 1)
    singles = [c for c in plan["candidates"] if c["kind"] != "ensemble"]
    budget = yaml.safe_load((out / "plan.yaml").read_text())["plan"]
    assert budget["keep"] == KEEP and budget["keep_mb"] > 0
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["made_of"]["kind"] == plan["chosen"]
    assert meta["metrics"]["loss"] == pytest.approx(min(c["loss"] for c in singles))
    # What best/ records is what it scores.
    assert _loss_of(pretune.predict(out, valid), valid) == pytest.approx(meta["metrics"]["loss"],
                                                                         abs=1e-4)


def test_the_ensemble_is_served_by_predict_with_its_recorded_score(assembled):
    out, valid = assembled
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["members"] and all(m["weight"] > 0 for m in spec["members"])
    frame = pretune.predict(out, valid, ensemble=True)
    assert _loss_of(frame, valid) == pytest.approx(spec["metrics"]["loss"], abs=1e-4)
    result = cli("predict", out, "--input", valid, "--ensemble")
    assert result.exit_code == 0, result.output
    assert "prob_positive" in result.stdout


def _assemble_with_two_members(out):
    """Assemble the run in ``out`` again, with an ensemble selection that takes its two best
    kept models (so a student is distilled from them); (summary, task)."""
    from pretune.data.task import load_task
    from pretune.search import assemble
    from pretune.training.caches import RunCaches

    config = assemble.kept_models(out, "loss", "minimize")[0].config
    task = load_task(config.data, config.data.data_seed)
    real = ensemble.select
    with pytest.MonkeyPatch.context() as mp:
        def two(outputs, *args, **kw):
            picked = real(outputs, *args, **kw)
            picked.weights = [1, 1] + [0] * (len(outputs) - 2)
            return picked

        mp.setattr(ensemble, "select", two)
        summary = assemble.assemble(out, task, RunCaches(out / "cache"), metric="loss",
                                    direction="minimize")
    return summary, task


@pytest.fixture(scope="module")
def rebuilt(assembled, tmp_path_factory):
    """The same run assembled again with a twin of its best kept model (so a soup forms: the
    average of two equal models scores the same) and an ensemble selection that takes two
    members (so a student is distilled from them)."""
    import shutil

    from pretune.models.io import read_meta
    from pretune.search import assemble

    source, valid = assembled
    out = tmp_path_factory.mktemp("again") / "run"
    shutil.copytree(source, out)
    kept = assemble.kept_models(out, "loss", "minimize")
    twin = out / "kept" / "trial-0099"
    shutil.copytree(kept[0].path, twin)
    meta = read_meta(twin)
    meta["trial"] = 99
    (twin / "pretune.yaml").write_text(yaml.safe_dump(meta))
    summary, _ = _assemble_with_two_members(out)
    return out, valid, summary


def test_soups_and_a_distilled_ensemble_are_built_and_recorded(rebuilt):
    out, valid, summary = rebuilt
    kinds = [c["kind"] for c in summary["candidates"]]
    assert kinds.count("soup") == 1 and kinds.count("distilled") == 1
    soup = next(c for c in summary["candidates"] if c["kind"] == "soup")
    assert len(soup["members"]) == 2
    student = out / "assembly" / "distilled"
    meta = yaml.safe_load((student / "pretune.yaml").read_text())
    assert meta["made_of"]["kind"] == "distilled" and len(meta["made_of"]["trials"]) == 2
    assert meta["settings"]["train"]["distill_logits"].endswith("ensemble-logits.safetensors")
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert best["made_of"]["kind"] == summary["chosen"]
    # pretune show says what best/ is made of and every candidate's score.
    shown = cli("show", out)
    assert shown.exit_code == 0, shown.output
    line = " ".join(next(x for x in shown.output.split("\n\n") if "final model" in x).split())
    for c in summary["candidates"]:
        assert f"{c['kind']} (" in line and f"{c['loss']:.4f}" in line


def test_a_saved_soup_or_student_loads_with_auto_classes_as_predict_reads_it(rebuilt):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, valid, _ = rebuilt
    for directory in [out / "best", *(out / "assembly").glob("*/")]:
        if not (directory / "config.json").is_file():
            continue
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        texts = pd.read_csv(valid)["text"].tolist()
        with torch.no_grad():
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits, -1)[:, 1].numpy()
        ours = pretune.predict(directory, valid)["prob_positive"].to_numpy()
        assert np.allclose(probs, ours, atol=1e-5), directory


def test_ensemble_selection_adds_models_while_the_score_improves():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    truth = np.eye(2)[labels]

    def noisy(scale):  # right on average, wrong in independent ways
        p = np.clip(0.6 * truth + 0.2 + rng.normal(0, scale, truth.shape), 0.01, None)
        return p / p.sum(axis=1, keepdims=True)

    outputs = [noisy(0.25), noisy(0.25), noisy(0.25), np.full_like(truth, 0.5)]
    settings = TrainConfig(metric="loss")
    picked = ensemble.select(outputs, labels, Classification(), settings)
    alone = ensemble.score(Classification(), outputs[0], labels, settings)["loss"]
    assert picked.metrics["loss"] < alone
    assert picked.weights[0] > 0 and sum(w > 0 for w in picked.weights[:3]) >= 2
    assert picked.weights[3] == 0  # the uninformative model never helps


def test_regression_ensembles_average_values_in_the_data_units():
    objective = Regression(mean=50.0, std=10.0)
    values = np.array([40.0, 60.0])
    logits = ensemble.as_logits(objective, values)
    assert np.allclose(objective.outputs(torch.tensor(logits)).numpy(), values)
    assert np.allclose(ensemble.average([values, values + 2], [1, 3]), values + 1.5)


def test_the_student_also_learns_the_ensembles_labels_of_unlabeled_texts(assembled, tmp_path):
    import shutil

    from safetensors import safe_open

    from pretune.models.io import read_meta
    from pretune.search import assemble

    source, _ = assembled
    out = tmp_path / "run"
    shutil.copytree(source, out)
    unlabeled = tmp_path / "more.txt"
    unlabeled.write_text("a warm and lovely film\nan awful , boring plot\nsuperb acting\n")
    for k in assemble.kept_models(out, "loss", "minimize"):  # as if searched with --unlabeled
        meta = read_meta(k.path)
        meta["settings"]["data"]["unlabeled"] = str(unlabeled)
        (k.path / "pretune.yaml").write_text(yaml.safe_dump(meta))
    _, task = _assemble_with_two_members(out)
    meta = read_meta(out / "assembly" / "distilled")
    assert meta["made_of"]["unlabeled_rows"] == 3
    assert meta["data"]["train_rows"] == len(task.train) + 3
    with safe_open(str(out / "assembly" / "ensemble-logits.safetensors"), framework="pt") as f:
        logits = f.get_tensor("logits")
    assert logits.shape == (len(task.train) + 3, 2)
    # The ensemble's soft labels of the training rows are the mean of its two members' outputs.
    kept = assemble.kept_models(out, "loss", "minimize")[:2]
    from pretune.models.io import load_model_dir
    from pretune.training.run import model_outputs

    mean = sum(model_outputs(*load_model_dir(k.path)[:2], k.config, task, split="train")[0]
               for k in kept) / 2
    assert np.allclose(torch.softmax(logits[: len(task.train)], -1).numpy(), mean, atol=1e-5)


def test_rerunning_a_finished_search_rebuilds_nothing(assembled, tmp_path):
    import shutil

    source, _ = assembled
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "best").iterdir()}
    plan = yaml.safe_load((out / "plan.yaml").read_text())["assembly"]
    args = [out if a == source else a for a in _ARGS[source]]
    result = cli(*args)  # the same command: the study has its trials
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "best").iterdir()} == before
    assert yaml.safe_load((out / "plan.yaml").read_text())["assembly"] == plan


def test_a_failing_assembly_leaves_the_search_and_its_best_trial(tiny_learner_dir, tmp_path,
                                                                  monkeypatch):
    from pretune.search import assemble

    def broken(*args, **kw):
        raise RuntimeError("no room to build")

    monkeypatch.setattr(assemble, "assemble", broken)
    train, valid = data_files(tmp_path / "data")
    result = pretune.tune(model=tiny_learner_dir, train=str(train), valid=str(valid),
                          out=tmp_path / "run", budget="2trials", space=NARROW,
                          fixed={"epochs": 1, "threads": 1}, pruner="none", precision="fp32",
                          lr_range_test=False, priors=False, refit=False)
    assert result.best_trial is not None and result.assembly is None
    meta = yaml.safe_load((tmp_path / "run" / "best" / "pretune.yaml").read_text())
    assert meta["trial"] == result.best_trial and "made_of" not in meta


def test_a_student_is_shortened_to_the_time_left_and_skipped_below_an_epoch():
    from pretune.config import RunConfig
    from pretune.search.assemble import MIN_STUDENT_EPOCHS, STUDENT_SHARE, student_epochs

    lead = RunConfig().with_settings({"epochs": 4})
    assert student_epochs(lead, took=80.0, left=100.0) is lead  # all its epochs fit
    short = student_epochs(lead, took=80.0, left=50.0)
    assert short.train.epochs == pytest.approx(4 * STUDENT_SHARE * 50 / 80, abs=0.01)
    assert short.train.lr == lead.train.lr  # only the length changes
    too_short = 80.0 * MIN_STUDENT_EPOCHS / (4 * STUDENT_SHARE) - 1.0
    assert student_epochs(lead, took=80.0, left=too_short) is None
