"""`pretune distill` on a real (tiny) search: the student, its run, the comparison."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from tests.search.helpers import cli

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


def test_distill_yaml_compares_teacher_and_student(distilled):
    run, out, result = distilled
    report = yaml.safe_load((out / "distill.yaml").read_text())
    assert report["metric"] == "loss"  # the teacher's run optimized loss
    teacher, student = report["teacher"], report["student"]
    assert teacher["path"] == str((run / "best").resolve())
    assert (teacher["layers"], student["layers"]) == (2, 1)
    assert student["parameters"] < teacher["parameters"]
    for row in (teacher, student):
        assert row["size_mb"] > 0 and row["examples_per_s"] > 0
        assert isinstance(row["loss"], float)
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert student["loss"] == pytest.approx(best["metrics"]["loss"], rel=1e-3)
    assert report["ratios"]["parameters"] == pytest.approx(
        student["parameters"] / teacher["parameters"], abs=1e-4)
    assert report["ratios"]["speedup"] == pytest.approx(
        student["examples_per_s"] / teacher["examples_per_s"], rel=1e-3)
    # The command printed the same table, and pretune show prints it again.
    for text in (result.stdout, cli("show", out).stdout):
        assert "distillation" in text and "student / teacher" in text
        assert f"{teacher['parameters']:,}" in text and f"{student['parameters']:,}" in text


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
