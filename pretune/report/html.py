"""``RUN/report.html``: one self-contained page about a search, charts drawn with plotly.

The page carries plotly.js inline, so it opens offline and fetches nothing. Every chart is built
from a ``pretune.search.history.History``; where the data cannot support a chart (too few trials,
a parameter that was not searched, no saved predictions) a sentence says so instead.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pretune._version import __version__
from pretune.errors import MissingExtraError
from pretune.report.tables import (classification_table, format_seconds, format_value, outcome,
                                   param_columns, summary)

REPORT_FILE = "report.html"

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728",
                "RUNNING": "#7f7f7f"}
BEST_COLOR = "#2ca02c"


def _plotly():
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise MissingExtraError("plotly", "report", "The HTML report") from None
    return go, get_plotlyjs


def write_report(run: str | Path, output: str | Path | None = None) -> Path:
    """Read the search in ``run`` and write its report (``run/report.html`` by default)."""
    _plotly()  # a missing extra fails before the study is read
    from pretune.search.history import read_history
    from pretune.outdir import atomic_write
    from pretune.permissions import private_files

    history = read_history(run)
    path = Path(output) if output is not None else history.path / REPORT_FILE
    with private_files():  # the report shows the run's data: for its owner only
        atomic_write(path, render(history))
    return path


def render(history) -> str:
    """The whole page as a string."""
    go, get_plotlyjs = _plotly()
    charts = Charts(go, history)
    sections = [
        ("Summary", _summary_html(history)),
        ("Best score so far", charts.best_so_far()),
        ("Learning curves", charts.learning_curves()),
        ("Parameter importance", charts.importance()),
        ("Parallel coordinates", charts.parallel()),
        ("Score against learning rate and batch size", charts.score_vs("lr") + charts.score_vs("batch_size")),
        ("Best model on the validation data", charts.confusion()),
        ("Time and peak memory per trial", charts.resources()),
        ("Trials", _trials_html(history)),
    ]
    dp = privacy_html(history)  # DP runs: the per-trial budget and the search's bound
    if dp:
        sections.insert(1, ("Differential privacy", dp))
    explained = _explain_links(history.path)
    if explained:
        sections.insert(7, ("Explanations of the best model's predictions", explained))
    body = "\n".join(f'<section><h2>{html.escape(title)}</h2>\n{content}\n</section>'
                     for title, content in sections)
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"pretune report: {history.path.name}"
    return page(title, _CSS, f"""<header><h1>{html.escape(title)}</h1>
<p class="note">written {html.escape(created)} by pretune {html.escape(__version__)} from
{html.escape(str(history.path))} ({html.escape(_storage_label(history.storage))})</p></header>
{body}""", head=f"<script>{get_plotlyjs()}</script>\n")


def page(title: str, css: str, body: str, *, head: str = "") -> str:
    """A self-contained HTML page: ``title``, the style ``css``, anything else for its head
    (``head``), then ``body``."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{css}</style>
{head}</head>
<body>
{body}
</body>
</html>
"""


class Charts:
    """One method per chart; each returns an HTML fragment (a plotly div or a sentence)."""

    def __init__(self, go, history):
        self.go = go
        self.h = history
        self.trials: pd.DataFrame = history.trials
        self.n = 0

    def _div(self, fig, *, height: int = 380) -> str:
        self.n += 1
        fig.update_layout(height=height, margin=dict(l=60, r=30, t=40, b=50),
                          template="plotly_white", font=dict(size=12))
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{self.n}",
                           config={"displaylogo": False, "responsive": True})

    def _metric_label(self) -> str:
        return f"validation {self.h.metric}"

    # -- the search over time ----------------------------------------------------------------

    def best_so_far(self) -> str:
        go, frame = self.go, self.h.best_so_far()
        if not len(frame):
            return _note("No trial has completed, so there is no best score yet.")
        minutes = frame["elapsed_s"] / 60
        fig = go.Figure()
        fig.add_trace(go.Scatter(
            x=minutes, y=frame["value"], mode="markers", name="complete trial",
            marker=dict(color=STATE_COLORS["COMPLETE"], size=8, opacity=0.6),
            text=[f"trial {n}" for n in frame["number"]],
            hovertemplate="%{text}<br>%{y:.4f} at %{x:.1f} min<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=minutes, y=frame["best"], mode="lines", line=dict(shape="hv", color=BEST_COLOR, width=3),
            name="best so far", hovertemplate="best %{y:.4f} at %{x:.1f} min<extra></extra>"))
        fig.update_xaxes(title="minutes since the search started", rangemode="tozero")
        fig.update_yaxes(title=self._metric_label())
        return self._div(fig)

    def learning_curves(self) -> str:
        go = self.go
        curves = [c for c in self.h.curves if c.values]
        if not curves:
            return _note("No trial reported an evaluation yet.")
        fig = go.Figure()
        for c in curves:
            best = c.number == self.h.best_trial
            faded = c.state != "COMPLETE"
            fig.add_trace(go.Scatter(
                x=c.epochs, y=c.values, mode="lines+markers",
                name=f"trial {c.number} ({c.state.lower()}){' best' if best else ''}",
                opacity=0.3 if faded else 0.9, legendgroup=c.state,
                line=dict(color=BEST_COLOR if best else STATE_COLORS.get(c.state, "#7f7f7f"),
                          width=4 if best else 1.5, dash="dot" if faded else "solid"),
                marker=dict(size=5),
                hovertemplate=f"trial {c.number}<br>epoch %{{x:.2f}}: %{{y:.4f}}<extra></extra>"))
        fig.update_xaxes(title="epochs")
        fig.update_yaxes(title=self._metric_label())
        text = _note("One line per trial; pruned and failed trials are faded and dotted, the best "
                     "trial is green.")
        return text + self._div(fig, height=440)

    # -- what mattered -----------------------------------------------------------------------

    def importance(self) -> str:
        go, scores = self.go, self.h.importance
        if not scores:
            return _note(self.h.importance_note)
        names = list(scores)[::-1]  # largest at the top
        fig = go.Figure(go.Bar(x=[scores[k] for k in names], y=names, orientation="h",
                               marker_color=STATE_COLORS["COMPLETE"],
                               hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
        fig.update_xaxes(title="share of the score's variance (fANOVA)", range=[0, 1])
        return _note(self.h.importance_note) + self._div(fig, height=max(240, 40 * len(names) + 100))

    def parallel(self) -> str:
        go = self.go
        done = self.trials[self.trials["state"] == "COMPLETE"]
        done = done[pd.to_numeric(done["value"], errors="coerce").notna()]
        # Parameters that took one value only (or none) say nothing here.
        params = [c for c in param_columns(done) if done[c].astype(str).nunique() > 1]
        if len(done) < 2 or not params:
            return _note("Parallel coordinates need at least two complete trials with searched "
                         "parameters.")
        dims = []
        for c in params:
            dims.append(_axis(done[c], c[len("params_"):]))
        values = done["value"].astype(float)
        dims.append(dict(label=self.h.metric, values=values.tolist()))
        reverse = self.h.direction == "minimize"
        fig = go.Figure(go.Parcoords(
            line=dict(color=values.tolist(), colorscale="Viridis", reversescale=reverse,
                      showscale=True, colorbar=dict(title=self.h.metric)),
            dimensions=dims))
        fig.update_layout(margin=dict(l=80, r=80, t=60, b=40))
        text = _note("One line per complete trial, colored by its score; drag along an axis to "
                     "select a range.")
        return text + self._div(fig, height=440)

    def score_vs(self, name: str) -> str:
        go = self.go
        column = f"params_{name}"
        label = {"lr": "learning rate", "batch_size": "batch size"}.get(name, name)
        if column not in self.trials.columns or not self.trials[column].notna().any():
            return _note(f"The {label} was not searched in this run.")
        rows = self.trials[self.trials["state"].isin(["COMPLETE", "PRUNED"])]
        rows = rows[pd.to_numeric(rows["value"], errors="coerce").notna() & rows[column].notna()]
        if not len(rows):
            return _note(f"No trial has a score to plot against the {label} yet.")
        fig = go.Figure()
        for state in ("COMPLETE", "PRUNED"):
            part = rows[rows["state"] == state]
            if not len(part):
                continue
            x = pd.to_numeric(part[column], errors="coerce")
            x = x if x.notna().all() else part[column].astype(str)
            fig.add_trace(go.Scatter(
                x=x, y=part["value"].astype(float), mode="markers",
                name=state.lower() + (" (last score before pruning)" if state == "PRUNED" else ""),
                marker=dict(color=STATE_COLORS[state], size=9,
                            opacity=0.9 if state == "COMPLETE" else 0.45),
                text=[f"trial {n}" for n in part["number"]],
                hovertemplate="%{text}<br>" + label + " %{x}<br>%{y:.4f}<extra></extra>"))
        numeric = pd.to_numeric(rows[column], errors="coerce")
        if name == "lr" and numeric.notna().all() and (numeric > 0).all():
            fig.update_xaxes(type="log")
        elif name == "batch_size":
            fig.update_xaxes(type="category", categoryorder="category ascending")
        fig.update_xaxes(title=label)
        fig.update_yaxes(title=self._metric_label())
        return self._div(fig, height=340)

    # -- the best model ----------------------------------------------------------------------

    def confusion(self) -> str:
        go, predictions = self.go, self.h.predictions
        if predictions is None or not len(predictions):
            return _note("The best model's validation predictions are not in best/ "
                         "(valid-predictions.csv is written when a search saves a new best model).")
        if self.h.task == "regression":
            return self._regression(predictions)
        if self.h.task == "multilabel":
            return self._multilabel(predictions)
        if self.h.task == "token":
            return self._entities(predictions)
        names, matrix, table = classification_table(predictions, self.h.labels)
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, np.maximum(totals, 1))
        fig = go.Figure(go.Heatmap(
            z=share, x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
            text=[[f"{matrix[i, j]}<br>{share[i, j]:.0%}" for j in range(len(names))]
                  for i in range(len(names))],
            texttemplate="%{text}", colorbar=dict(title="share of row"),
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
        fig.update_xaxes(title="predicted label", type="category")
        fig.update_yaxes(title="true label", type="category", autorange="reversed")
        side = max(320, 60 * len(names) + 160)
        accuracy = float(np.trace(matrix)) / max(int(matrix.sum()), 1)
        text = _note(f"Trial {self.h.best_trial} on {int(matrix.sum())} validation rows: accuracy "
                     f"{accuracy:.4f}.")
        rows = "".join(
            f"<tr><td>{html.escape(str(r['class']))}</td><td>{r['precision']:.3f}</td>"
            f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{int(r['support'])}</td></tr>"
            for _, r in table.iterrows())
        per_class = ("<table class='classes'><thead><tr><th>class</th><th>precision</th>"
                     "<th>recall</th><th>F1</th><th>support</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
        fig.update_layout(width=side + 120)
        return text + per_class + self._div(fig, height=side)

    def _regression(self, predictions: pd.DataFrame) -> str:
        """Predicted against true values (a confusion matrix has no meaning for numbers)."""
        go = self.go
        true = pd.to_numeric(predictions["label"], errors="coerce").to_numpy(dtype=float)
        pred = pd.to_numeric(predictions["prediction"], errors="coerce").to_numpy(dtype=float)
        fig = go.Figure(go.Scattergl(x=true, y=pred, mode="markers", marker=dict(size=5, opacity=0.6),
                                     hovertemplate="true %{x:.4g}, predicted %{y:.4g}<extra></extra>"))
        finite = np.isfinite(true) & np.isfinite(pred)
        if finite.any():
            lo = float(min(true[finite].min(), pred[finite].min()))
            hi = float(max(true[finite].max(), pred[finite].max()))
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="prediction = truth",
                                     line=dict(color="#888", dash="dash")))
        fig.update_layout(showlegend=False)
        fig.update_xaxes(title="true value")
        fig.update_yaxes(title="predicted value")
        mae = float(np.mean(np.abs(pred[finite] - true[finite]))) if finite.any() else float("nan")
        text = _note(f"Trial {self.h.best_trial} on {int(finite.sum())} validation rows: mean "
                     f"absolute error {mae:.4g}, in the data's units.")
        return text + self._div(fig, height=420)

    def _multilabel(self, predictions: pd.DataFrame) -> str:
        """Per-label precision, recall and F1 of the label sets at the saved threshold."""
        import json

        from sklearn.metrics import precision_recall_fscore_support

        names = list(self.h.labels) or sorted(
            c[len("prob_"):] for c in predictions.columns if c.startswith("prob_"))
        index = {n: i for i, n in enumerate(names)}

        def indicators(column: str) -> np.ndarray:
            out = np.zeros((len(predictions), len(names)), dtype=int)
            for row, text in enumerate(predictions[column].astype(str)):
                for name in json.loads(text):
                    if str(name) in index:
                        out[row, index[str(name)]] = 1
            return out

        try:
            y_true, y_pred = indicators("label"), indicators("prediction")
        except ValueError:
            return _note("The best model's validation predictions could not be read as label lists.")
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{p[i]:.3f}</td><td>{r[i]:.3f}</td><td>{f[i]:.3f}</td>"
            f"<td>{int(s[i])}</td></tr>" for i, n in enumerate(names))
        exact = float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else float("nan")
        text = _note(f"Trial {self.h.best_trial} on {len(y_true)} validation rows: every label right "
                     f"in {exact:.1%} of them (subset accuracy). Per label:")
        return text + ("<table class='classes'><thead><tr><th>label</th><th>precision</th>"
                       "<th>recall</th><th>F1</th><th>support</th></tr></thead>"
                       f"<tbody>{rows}</tbody></table>")

    def _entities(self, predictions: pd.DataFrame) -> str:
        """Token classification: seqeval's strict precision, recall and F1 per entity type,
        and where the true entities went (same span and type, same span and another type, or
        no predicted entity on their span), as a heatmap."""
        import json

        from pretune.training.metrics import entity_confusion, entity_report

        try:
            true = [json.loads(t) for t in predictions["label"].astype(str)]
            pred = [json.loads(t) for t in predictions["prediction"].astype(str)]
        except ValueError:
            return _note("The best model's validation predictions could not be read as tag lists.")
        report = entity_report(true, pred, self.h.scheme or "IOB2")
        kinds = sorted(k for k in report if not k.endswith(" avg"))
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{report[k]['precision']:.3f}</td>"
            f"<td>{report[k]['recall']:.3f}</td><td>{report[k]['f1-score']:.3f}</td>"
            f"<td>{int(report[k]['support'])}</td></tr>" for k in kinds + ["micro avg"]
            if k in report)
        words = sum(len(t) for t in true)
        text = _note(f"Trial {self.h.best_trial} on {len(true)} validation sentences ({words} "
                     f"words), entities scored strictly (type and both ends right). Per entity "
                     f"type:")
        table = ("<table class='classes'><thead><tr><th>entity type</th><th>precision</th>"
                 "<th>recall</th><th>F1</th><th>support</th></tr></thead>"
                 f"<tbody>{rows}</tbody></table>")
        rows_, cols, counts = entity_confusion(true, pred)
        if not rows_:
            return text + table
        fig = self.go.Figure(self.go.Heatmap(
            z=counts, x=cols, y=rows_, colorscale="Blues", texttemplate="%{z}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
        fig.update_xaxes(title="predicted on the same span", type="category")
        fig.update_yaxes(title="true entity (or none)", type="category", autorange="reversed")
        return text + table + self._div(fig, height=max(320, 50 * len(rows_) + 160))

    # -- cost --------------------------------------------------------------------------------

    def resources(self) -> str:
        go = self.go
        rows = self.trials[pd.to_numeric(self.trials["seconds"], errors="coerce").notna()]
        if not len(rows):
            return _note("No trial has recorded its time yet.")
        from plotly.subplots import make_subplots

        colors = [STATE_COLORS.get(s, "#7f7f7f") for s in rows["state"]]
        labels = [f"{n}" for n in rows["number"]]
        hover = [f"trial {n}: {outcome(r)}" for n, (_, r) in zip(rows["number"], rows.iterrows())]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("seconds", "peak memory (MB, RSS)"))
        fig.add_trace(go.Bar(x=labels, y=rows["seconds"].astype(float), marker_color=colors,
                             hovertext=hover, name="seconds", showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=labels, y=pd.to_numeric(rows["peak_rss_mb"], errors="coerce"),
                             marker_color=colors, hovertext=hover, name="peak MB",
                             showlegend=False), row=1, col=2)
        fig.update_xaxes(title="trial", type="category")
        text = _note("Bars are colored by outcome: blue complete, orange pruned, red failed.")
        return text + self._div(fig, height=320)


def _axis(values: pd.Series, label: str) -> dict[str, Any]:
    """A parallel-coordinates axis: numbers as they are (log10 for wide positive ranges),
    anything else as evenly spaced categories."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and not values.map(lambda v: isinstance(v, bool)).any():
        low, high = float(numeric.min()), float(numeric.max())
        if low > 0 and high / low >= 100:
            ticks = [10.0 ** k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]
            return dict(label=f"{label} (log)", values=np.log10(numeric).tolist(),
                        tickvals=np.log10(ticks).tolist(), ticktext=[f"{t:g}" for t in ticks])
        return dict(label=label, values=numeric.tolist())
    text = values.fillna("(none)").astype(str)
    cats = sorted(text.unique())
    index = {c: i for i, c in enumerate(cats)}
    return dict(label=label, values=[index[t] for t in text], tickvals=list(range(len(cats))),
                ticktext=cats)


def _summary_html(history) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in summary(history))
    metrics = ""
    if history.best_metrics:
        shown = {k: v for k, v in history.best_metrics.items()
                 if k not in ("step", "lr", "seconds", "train_loss") and v is not None}
        cells = "".join(f"<td>{html.escape(k)} {format_value(v) if k in ('epoch',) else f'{float(v):.4f}'}</td>"
                        for k, v in shown.items())
        metrics = f"<p class='note'>Best model's validation metrics:</p><table class='metrics'><tr>{cells}</tr></table>"
    return f"<table class='summary'>{rows}</table>{metrics}"


def privacy_html(history) -> str:
    """The privacy of a search run with dp_epsilon: the best model's spent epsilon (from
    best/pretune.yaml), the bound on the whole search, and what the choice among trials leaks;
    "" without DP."""
    from pretune.training.privacy import SEARCH_NOTE, describe, search_bound
    from pretune.yamlfile import read_mapping

    meta_path = history.path / "best" / "pretune.yaml"
    try:
        meta = read_mapping(meta_path, "best/pretune.yaml") if meta_path.is_file() else {}
    except Exception:  # noqa: BLE001 - a report without this section rather than none
        meta = {}
    spent = meta.get("privacy")
    if not spent:
        return ""
    trials = len(history.ranked())
    return "".join(_note(line) for line in (
        "Best model: " + describe(spent) + ".", search_bound(spent["target_epsilon"], trials) + ".",
        SEARCH_NOTE))


def _explain_links(run: Path) -> str:
    """Links to the pages ``pretune explain`` wrote in the run directory (RUN/explain*.html)."""
    pages = sorted(run.glob("explain*.html"))
    items = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>' for p in pages)
    return f"<p class='note'>Written by pretune explain: tokens shaded by their weight toward each prediction.</p><ul>{items}</ul>" if pages else ""


def _trials_html(history) -> str:
    frame = history.ranked()
    if not len(frame):
        return _note("The study has no trials yet.")
    params = param_columns(frame)
    head = ["trial", history.metric, "outcome", *[c[len('params_'):] for c in params],
            "seconds", "peak MB"]
    rows = []
    for _, r in frame.iterrows():
        best = history.best_trial == int(r["number"])
        cells = [f"{int(r['number'])}{' (best)' if best else ''}", format_value(r["value"]),
                 outcome(r), *[format_value(r[c]) for c in params],
                 format_seconds(r["seconds"]) if pd.notna(r["seconds"]) else "",
                 format_value(round(float(r["peak_rss_mb"]))) if pd.notna(r["peak_rss_mb"]) else ""]
        cls = " class='best'" if best else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f"<div class='scroll'><table class='trials'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _storage_label(storage: str) -> str:
    if storage.startswith("sqlite:///"):
        return f"study in {Path(storage[len('sqlite:///'):]).name}"
    if "://" not in storage:
        return f"study in {Path(storage).name}"
    return "study in " + storage.split("://", 1)[0] + " storage"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 0 24px 48px; color: #222; }
h1 { font-size: 1.6em; margin: 24px 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.note { color: #555; margin: 4px 0 8px; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 3px 10px; text-align: left; border-bottom: 1px solid #eee; }
table.summary th { color: #555; font-weight: 600; white-space: nowrap; vertical-align: top; }
table.trials td, table.classes td { font-variant-numeric: tabular-nums; }
tr.best td { background: #eaf6ea; font-weight: 600; }
.scroll { overflow-x: auto; }
table.classes { margin: 8px 0; }
"""
