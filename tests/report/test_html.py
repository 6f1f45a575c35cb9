"""The report page without a browser: what it says where data is missing, and that a failure
to write it at the end of a search never fails the search."""

from __future__ import annotations

import shutil

from pretune.report.html import render
from pretune.search.history import read_history


def test_too_few_trials_or_no_predictions_give_sentences_not_charts(tiny_search_run, tmp_path):
    out, _, _ = tiny_search_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "best" / "valid-predictions.csv").unlink()
    history = read_history(copy)
    history.importance, history.importance_note = None, "Parameter importance needs more trials."
    page = render(history)
    assert "Parameter importance needs more trials." in page
    assert "validation predictions are not in best/" in page
    assert page.count("Plotly.newPlot(") == 6  # the other charts are still drawn


def test_a_report_that_cannot_be_written_does_not_fail_the_search(monkeypatch, tmp_path, capsys):
    import pretune.report.html as html
    from pretune.cli import tune
    from pretune.errors import MissingExtraError

    def broken(run, output=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(html, "write_report", broken)
    tune.write_report_safely(tmp_path)  # no exception
    err = capsys.readouterr().err
    assert "the report could not be written (RuntimeError: disk full)" in " ".join(err.split())

    def missing(run, output=None):
        raise MissingExtraError("plotly", "report", "The HTML report")

    monkeypatch.setattr(html, "write_report", missing)
    tune.write_report_safely(tmp_path)
    assert "pip install 'pretune[report]'" in " ".join(capsys.readouterr().err.split())


def test_the_report_links_to_the_explanations_written_in_the_run(tiny_search_run, tmp_path):
    import pytest

    pytest.importorskip("captum", reason="the explain extra is needed: pip install 'pretune[explain]'")
    from tests.search.helpers import cli

    out, _, valid = tiny_search_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert "explain.html" not in render(read_history(copy))
    result = cli("explain", copy, "--input", valid, "--output", copy / "explain.html",
                 "--limit", "5", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert "explained 5 rows" in result.output
    page = (copy / "explain.html").read_text(encoding="utf-8")
    assert page.count('<div class="row') == 5
    assert '<a href="explain.html">explain.html</a>' in render(read_history(copy))
