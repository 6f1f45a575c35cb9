"""`pretune show`, `pretune export` and `pretune report` on a real search's run directory."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import yaml

from tests.search.helpers import cli


def test_show_prints_the_summary_and_best_trials_first(tiny_search_run):
    out, _, _ = tiny_search_run
    result = cli("show", out, "--top", "2")
    assert result.exit_code == 0, result.output
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    text = result.stdout
    assert f"best: trial {best['trial']}: loss {best['metrics']['loss']:.4f}" in text
    assert "trials: 4 (4 complete)" in text
    assert "top 2 of 4 trials" in text
    plan = yaml.safe_load((out / "plan.yaml").read_text())["plan"]
    assert "plan: " in text and f"pruner {plan['pruner']}" in " ".join(text.split())
    table = pd.read_csv(out / "trials.csv").sort_values("value")
    rows = [line for line in text.splitlines() if line.startswith("│") and "complete" in line]
    assert len(rows) == 2
    # Best first (loss is minimized), marked, with its score.
    first, second = (int(r.split("│")[1]) for r in rows)
    assert [first, second] == list(table["number"][:2])
    assert "*" in rows[0] and f"{table['value'].iloc[0]:.4f}" in rows[0]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_writes_the_trials_table(tiny_search_run, tmp_path, fmt):
    out, _, _ = tiny_search_run
    expected = pd.read_csv(out / "trials.csv")
    target = tmp_path / f"trials.{fmt}"
    result = cli("export", out, "--format", fmt, "--output", target)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        got = pd.read_csv(target)
    else:
        got = pd.DataFrame(json.loads(target.read_text()))
    assert list(got["number"]) == list(expected["number"])
    assert list(got["state"]) == list(expected["state"])
    assert got["value"].to_numpy() == pytest.approx(expected["value"].to_numpy())
    assert got["params_lr"].to_numpy() == pytest.approx(expected["params_lr"].to_numpy())
    for column in ("seconds", "peak_rss_mb", "valid_accuracy", "params_batch_size"):
        assert column in got.columns


def test_export_to_standard_output(tiny_search_run):
    out, _, _ = tiny_search_run
    result = cli("export", out, "--format", "csv")
    assert result.exit_code == 0
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 4


@pytest.mark.parametrize("command", [["show"], ["export"], ["report"]])
def test_a_path_that_is_not_a_run_is_a_one_line_error(tmp_path, command):
    result = cli(*command, tmp_path / "nope")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: RUN must be a run directory")
    assert "Traceback" not in result.output


def test_export_refuses_an_unknown_format(tiny_search_run):
    out, _, _ = tiny_search_run
    result = cli("export", out, "--format", "xml")
    assert result.exit_code == 2
    assert "--format must be one of csv, json, but got 'xml'" in result.stderr


def test_report_command_writes_the_page(tiny_search_run, tmp_path):
    out, _, _ = tiny_search_run
    target = tmp_path / "r.html"
    result = cli("report", out, "--output", target)
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert "Plotly.newPlot(" in page and "pretune report" in page
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert f"trial {best['trial']}: loss {best['metrics']['loss']:.4f}" in page


def test_missing_plotly_is_an_error_naming_the_install(tiny_search_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_plotly(name, *args, **kwargs):
        if name.startswith("plotly"):
            raise ImportError("No module named 'plotly'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    out, _, _ = tiny_search_run
    result = cli("report", out)
    assert result.exit_code == 2
    assert "pip install 'pretune[report]'" in result.stderr
