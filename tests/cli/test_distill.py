"""`pretune distill` on real (tiny) searches: the student, its run, its predictions, the
comparison; text preprocessing, regression, and the refusal of image runs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

import pretune
from tests.search.helpers import NARROW, cli, regression_rows, space_file

QUICK = ["--budget", "2trials", "--fixed", "epochs=1", "--fixed", "threads=1",
         "--no-lr-range-test", "--no-priors", "--no-report"]


@pytest.fixture(scope="module")
def distilled(tiny_search_run, tmp_path_factory):
    run, _, _ = tiny_search_run
    out = tmp_path_factory.mktemp("distill") / "student"
    result = cli("distill", run, "--student", "layers:1", "--out", out, *QUICK)
    return run, out, result


def test_distill_trains_a_smaller_student_in_its_own_run(distilled):
    from transformers import AutoModelForSequenceClassification

    run, out, result = distilled
    assert result.exit_code == 0, result.output
    student = AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert student.config.num_hidden_layers == 1  # the tiny teacher has 2
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2
    assert {"params_distill_alpha", "params_distill_temperature"} <= set(trials.columns)
    record = yaml.safe_load((out / "pretune.yaml").read_text())
    assert record["settings"]["train"]["distill_logits"].startswith(str((run / "cache").resolve()))
    assert record["settings"]["data"]["train"] == yaml.safe_load(
        (run / "pretune.yaml").read_text())["settings"]["data"]["train"]
    assert list((run / "cache").glob("teacher-logits-*.safetensors"))


def test_the_student_predicts_the_labels_its_metrics_record(distilled, tiny_search_run,
                                                             tmp_path):
    _, out, _ = distilled
    _, _, valid = tiny_search_run
    done = cli("predict", out, "--input", valid, "--output", tmp_path / "preds.csv")
    assert done.exit_code == 0, done.output
    preds = pd.read_csv(tmp_path / "preds.csv")
    truth = pd.read_csv(valid)["label"].astype(str)
    assert len(preds) == len(truth)
    assert set(preds["prediction"]) <= {"negative", "positive"}
    probs = preds[["prob_negative", "prob_positive"]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx([1.0] * len(preds), abs=1e-5)
    accuracy = float((preds["prediction"] == truth).mean())
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    report = yaml.safe_load((out / "distill.yaml").read_text())
    assert accuracy == pytest.approx(best["metrics"]["accuracy"], abs=1e-6)
    assert accuracy == pytest.approx(report["student"]["accuracy"], abs=1e-6)


def test_distill_yaml_compares_teacher_and_student(distilled):
    run, out, result = distilled
    report = yaml.safe_load((out / "distill.yaml").read_text())
    assert report["metric"] == "loss"  # the teacher's run optimized loss
    assert report["metrics"] == ["accuracy", "loss"]  # the task's main metric, and the run's
    teacher, student = report["teacher"], report["student"]
    assert teacher["path"] == str((run / "best").resolve())
    assert (teacher["layers"], student["layers"]) == (2, 1)
    assert student["parameters"] < teacher["parameters"]
    for row in (teacher, student):
        assert row["size_mb"] > 0 and row["examples_per_s"] > 0
        assert isinstance(row["loss"], float) and 0.0 <= row["accuracy"] <= 1.0
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    for metric in ("loss", "accuracy"):
        assert student[metric] == pytest.approx(best["metrics"][metric], rel=1e-3)
    teacher_meta = yaml.safe_load((run / "best" / "pretune.yaml").read_text())
    assert teacher["accuracy"] == pytest.approx(teacher_meta["metrics"]["accuracy"], abs=1e-6)
    assert report["ratios"]["accuracy_difference"] == pytest.approx(
        student["accuracy"] - teacher["accuracy"], abs=1e-6)
    assert report["ratios"]["parameters"] == pytest.approx(
        student["parameters"] / teacher["parameters"], abs=1e-4)
    assert report["ratios"]["speedup"] == pytest.approx(
        student["examples_per_s"] / teacher["examples_per_s"], rel=1e-3)
    # The command printed the same table, and pretune show prints it again.
    for text in (result.stdout, cli("show", out).stdout):
        assert "distillation" in text and "student / teacher" in text
        assert f"{teacher['parameters']:,}" in text and f"{student['parameters']:,}" in text
        lines = {line.split()[1]: line for line in text.splitlines()
                 if len(line.split()) > 1 and line.split()[1] in ("accuracy", "loss")}
        assert set(lines) == {"accuracy", "loss"}  # a row for each metric
        for metric, line in lines.items():
            assert f"{teacher[metric]:.4f}" in line and f"{student[metric]:.4f}" in line


def test_distill_again_uses_the_cached_teacher_logits(distilled, tmp_path, monkeypatch):
    import pretune
    from pretune.training import distill as kd

    run, _, _ = distilled
    monkeypatch.setattr(kd, "predict_logits", lambda *a, **k: pytest.fail("teacher ran again"))
    result = pretune.distill(run, student="layers:1", budget="1trials", out=tmp_path / "again",
                             fixed={"epochs": 1, "distill_alpha": 0.0}, priors=False,
                             lr_range_test=False, seed_check=0)
    assert not result.logits_computed
    assert result.student_path == tmp_path / "again" / "best"
    assert result.metrics["loss"] == pytest.approx(result.student["loss"], rel=1e-3)
    assert result.student["parameters"] < result.teacher["parameters"]
    assert "distill_alpha" not in result.tune.best_params  # pinned: not searched


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for word in words:
        assert word in result.output


def test_a_missing_run_is_a_one_line_error(tmp_path):
    one_line_error(cli("distill", tmp_path / "nope", *QUICK), "does not exist")


def test_a_run_without_a_best_model_is_a_one_line_error(tiny_search_run, tmp_path):
    run, _, _ = tiny_search_run
    empty = tmp_path / "run"
    empty.mkdir()
    shutil.copy(run / "pretune.yaml", empty / "pretune.yaml")
    one_line_error(cli("distill", empty, *QUICK), "no best/ model")


@pytest.mark.parametrize("spec, words", [("layers:x", ["layers:N"]), ("blocks:2", ["layers:N"]),
                                         ("layers:2", ["fewer layers"])])
def test_a_bad_student_is_a_one_line_error(tiny_search_run, tmp_path, spec, words):
    run, _, _ = tiny_search_run
    one_line_error(cli("distill", run, "--student", spec, "--out", tmp_path / "s", *QUICK), *words)


# --- text preprocessing: the teacher and the student read the texts as they were trained ----------


@pytest.fixture(scope="module")
def preprocessed_run(tiny_model_dir, tmp_path_factory):
    """A teacher search with lowercase and stem pinned, on data with upper-case words."""
    from tests.conftest import SENTIMENT_ROWS

    root = tmp_path_factory.mktemp("prep")
    rows = [(text.upper() if i % 2 else text.title(), label)
            for i, (text, label) in enumerate(SENTIMENT_ROWS)]
    train, valid = root / "train.csv", root / "valid.csv"
    pd.DataFrame(rows * 4, columns=["text", "label"]).to_csv(train, index=False)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(valid, index=False)
    out = root / "run"
    done = cli("tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
               "--out", out, "--space", space_file(root / "space.yaml", NARROW),
               "--fixed", "lowercase=true", "--fixed", "stem=porter", "--metric", "loss",
               "--pruner", "none", "--precision", "fp32", "--no-refit", *QUICK)
    assert done.exit_code == 0, done.output  # --no-refit: the teacher is scored on unseen rows
    return out, valid


def test_distill_a_run_with_text_preprocessing(preprocessed_run, tmp_path):
    from pretune.data.text_prep import apply_to_task
    from pretune.training import distill as kd

    run, valid = preprocessed_run
    out = tmp_path / "student"
    result = cli("distill", run, "--student", "layers:1", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and "FAIL" not in set(trials["state"])  # none refused the logits
    assert (trials["state"] == "COMPLETE").any()
    # The student inherits the teacher's preprocessing; predict applies it.
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["settings"]["data"]["lowercase"] is True
    assert meta["settings"]["data"]["stem"] == "porter"
    preds = pretune.predict(out, valid)
    truth = pd.read_csv(valid)["label"].astype(str)
    assert set(preds["prediction"]) <= {"negative", "positive"}
    assert float((preds["prediction"] == truth).mean()) == pytest.approx(
        meta["metrics"]["accuracy"], abs=1e-6)
    # The teacher's score is the one it got on the preprocessed texts in its own search.
    report = yaml.safe_load((out / "distill.yaml").read_text())
    teacher_meta = yaml.safe_load((run / "best" / "pretune.yaml").read_text())
    for metric in ("loss", "accuracy"):
        assert report["teacher"][metric] == pytest.approx(teacher_meta["metrics"][metric],
                                                          rel=1e-4, abs=1e-6)
    # The teacher's logits are its outputs on the preprocessed training texts, not the raw ones.
    import torch

    from pretune.config import RunConfig
    from pretune.data.task import load_task
    from pretune.models.io import load_model_dir
    from pretune.training.run import data_seed

    logits, stored = kd.read_logits(report["teacher_logits"])
    base = RunConfig.from_dict(yaml.safe_load((run / "pretune.yaml").read_text())["settings"])
    raw = load_task(base.data, data_seed(base))
    seen = apply_to_task(raw, base.data)
    assert seen.train.texts != raw.train.texts  # the preprocessing changes the texts
    assert stored["train_digest"] == kd.train_digest(seen) == stored["teacher_digest"]
    model, tokenizer, _ = load_model_dir(run / "best")
    max_length = teacher_meta["settings"]["data"]["max_length"]
    expected = kd.predict_logits(model, tokenizer, seen.train.texts, None, max_length)
    assert torch.allclose(logits, expected, atol=1e-4)
    on_raw = kd.predict_logits(model, tokenizer, raw.train.texts, None, max_length)
    assert not torch.allclose(logits, on_raw, atol=1e-4)


def test_a_student_may_pin_its_own_preprocessing(preprocessed_run, tmp_path):
    run, valid = preprocessed_run
    result = pretune.distill(run, student="layers:1", budget="1trials", out=tmp_path / "own",
                             fixed={"epochs": 1, "threads": 1, "stem": "none"}, priors=False,
                             lr_range_test=False, seed_check=0)
    assert result.tune.best_trial is not None
    meta = yaml.safe_load((result.student_path / "pretune.yaml").read_text())
    assert meta["settings"]["data"]["lowercase"] is True  # inherited
    assert meta["settings"]["data"]["stem"] == "none"  # its own
    from pretune.training import distill as kd

    _, stored = kd.read_logits(result.report["teacher_logits"])
    assert stored["teacher_digest"] != stored["train_digest"]  # the teacher read its own texts
    assert len(pretune.predict(result.student_path, valid)) == 12


# --- regression end to end ---------------------------------------------------------------------------

def test_distill_a_regression_run_and_predict(tiny_learner_dir, tmp_path):
    from sklearn.metrics import mean_squared_error, r2_score

    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    regression_rows(64, 0).to_csv(train, index=False)
    regression_rows(24, 1).to_csv(valid, index=False)
    space = space_file(tmp_path / "space.yaml",
                       {"extend": False, "lr": {"low": 2e-3, "high": 1e-2, "log": True}})
    run = tmp_path / "run"
    done = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
               "--out", run, "--space", space, "--label-column", "price", "--fixed",
               "batch_size=8", "--pruner", "none", "--precision", "fp32", "--no-refit", *QUICK)
    assert done.exit_code == 0, done.output
    out = tmp_path / "student"
    result = cli("distill", run, "--student", "layers:1", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    report = yaml.safe_load((out / "distill.yaml").read_text())
    assert report["metric"] == "r2" and report["metrics"] == ["r2", "mse"]
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["task"]["kind"] == "regression"
    preds = pretune.predict(out, valid)
    truth = pd.read_csv(valid)["price"]
    assert list(preds.columns) == ["text", "price", "prediction"]
    assert np.isfinite(preds["prediction"]).all()
    assert r2_score(truth, preds["prediction"]) == pytest.approx(meta["metrics"]["r2"], abs=1e-4)
    assert r2_score(truth, preds["prediction"]) == pytest.approx(report["student"]["r2"], abs=1e-4)
    assert mean_squared_error(truth, preds["prediction"]) == pytest.approx(
        report["student"]["mse"], rel=1e-3)
    assert abs(preds["prediction"].mean() - truth.mean()) < truth.std()  # the targets' units
    teacher_meta = yaml.safe_load((run / "best" / "pretune.yaml").read_text())
    assert report["teacher"]["r2"] == pytest.approx(teacher_meta["metrics"]["r2"], abs=1e-4)
    assert "r2" in result.stdout and "mse" in result.stdout


# --- image runs are refused -------------------------------------------------------------------------


def test_an_image_run_is_refused_with_a_one_line_error(tmp_path):
    from tests.image_helpers import build_tiny_vit_dir, write_square_folder

    vit = build_tiny_vit_dir(tmp_path / "vit")
    train = write_square_folder(tmp_path / "train", per_class=4, seed=0)
    valid = write_square_folder(tmp_path / "valid", per_class=2, seed=1)
    run = tmp_path / "run"
    done = cli("tune", "--model", vit, "--train", train, "--valid", valid, "--out", run,
               "--budget", "1trials", "--fixed", "epochs=1", "--fixed", "batch_size=8",
               "--fixed", "threads=1", "--no-lr-range-test", "--no-priors", "--no-report",
               "--pruner", "none", "--precision", "fp32")
    assert done.exit_code == 0, done.output
    out = tmp_path / "student"
    one_line_error(cli("distill", run, "--out", out, *QUICK), "text runs only", "image run")
    assert not out.exists()  # refused before any work
    assert not list(run.glob("cache/teacher-logits-*"))


def test_searched_preprocessing_of_the_best_model_is_inherited():
    """A teacher search that searched (not pinned) the preprocessing has it only in the best
    model's settings: the student's base takes it from there."""
    from pretune.search.distill import student_base

    record = {"settings": {"data": {"train": "t.csv", "max_length": None}}}
    best = {"settings": {"data": {"train": "t.csv", "max_length": 32, "lowercase": True,
                                  "stopwords": True, "stem": "snowball", "data_seed": 7}}}
    base = student_base(record, best)
    assert (base.data.lowercase, base.data.stopwords, base.data.stem) == (True, True, "snowball")
    assert (base.data.max_length, base.data.data_seed) == (32, 7)
    assert student_base(record, {}).data.lowercase is False
