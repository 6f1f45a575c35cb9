"""What `pretune tune` shows while it searches.

On a terminal: a live display with a bar for the budget (time, or trials), a bar for the running
trial's optimizer steps with its loss and last validation score, and a table of the finished
trials (best marked). Elsewhere (a log file, a pipe, CI): one plain line when the search starts,
one per finished trial, and the summary. ``quiet`` shows neither.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from pretune.cli.common import console

MODE_LIVE, MODE_PLAIN, MODE_QUIET = "live", "plain", "quiet"
TABLE_ROWS = 15  # finished trials kept in the live table (the best always stays)


def choose_mode(*, quiet: bool = False, verbose: bool = False) -> str:
    """Live bars only on a terminal and when library logs are not also being printed."""
    if quiet:
        return MODE_QUIET
    if console.is_terminal and not verbose:
        return MODE_LIVE
    return MODE_PLAIN


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def outcome(report, pruned_at: float | None = None) -> str:
    """complete, complete (deadline), pruned at N epochs, failed: reason."""
    if report.state == "COMPLETE":
        return "complete (deadline)" if report.stop_reason == "deadline" else "complete"
    if report.state == "PRUNED":
        return f"pruned at {pruned_at:g} epochs" if pruned_at is not None else "pruned"
    if report.state == "FAIL":
        return f"failed: {report.fail_reason}" if report.fail_reason else "failed"
    return report.state.lower()


class SearchProgress:
    """The ``progress`` and ``on_trial`` hooks of a search, drawn in one of three modes."""

    def __init__(self, mode: str, *, budget_label: str, metric: str | None = None,
                 intro: str | None = None):
        self.mode = mode
        self.intro = intro  # the plain mode's first line, once the input has been checked
        self.budget_label = budget_label
        self.metric = metric
        self.started = time.monotonic()
        self.seconds: float | None = None
        self.trials_left: int | None = None
        self.finished: list[tuple[Any, str]] = []  # (TrialReport, outcome text)
        self.best: int | None = None
        self.current: int | None = None
        self.last_epoch: float | None = None  # of the running trial's last evaluation
        self.last_score: float | None = None  # its objective metric there
        self.loss: float | None = None  # its last optimizer step's training loss
        self.live: Live | None = None
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=30),
            TextColumn("{task.fields[done]}"), TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
            console=console,
        )
        self.budget_task = None
        self.trial_bar = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("steps"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.trial_task = None

    # -- start and end -----------------------------------------------------------------------

    def __enter__(self) -> "SearchProgress":
        if self.mode == MODE_LIVE:
            self.live = Live(get_renderable=self._render, console=console, refresh_per_second=4,
                             transient=False, redirect_stdout=True, redirect_stderr=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.current = None  # the last frame keeps the table, not the bars
            self.live.refresh()
            self.live.__exit__(*exc)
            self.live = None

    # -- the search's hooks ------------------------------------------------------------------

    def search_started(self, trials_left: int | None, seconds: float | None,
                       metric: str | None = None) -> None:
        self.trials_left, self.seconds = trials_left, seconds
        self.metric = metric or self.metric
        self.started = time.monotonic()
        if self.mode == MODE_LIVE:
            total = seconds if seconds is not None else trials_left
            self.budget_task = self.bars.add_task(f"budget {self.budget_label}", total=total or None,
                                                  done="", note="")

    def on_plan(self, plan) -> None:
        """The budget plan, before the first trial: one line (not when quiet)."""
        if self.mode == MODE_PLAIN and self.intro:
            console.print(escape(self.intro), highlight=False, soft_wrap=True)
        if self.mode != MODE_QUIET:
            console.print(f"plan: {escape(plan.message())}", highlight=False, soft_wrap=True)

    def trial_started(self, number: int, params: dict) -> None:
        self.current, self.last_epoch, self.last_score, self.loss = number, None, None, None
        if self.mode == MODE_LIVE:
            if self.trial_task is not None:
                self.trial_bar.remove_task(self.trial_task)
            self.trial_task = self.trial_bar.add_task(f"trial {number}", total=None, info="")

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.trial_task is not None:
            self.loss = loss
            self.trial_bar.update(self.trial_task, completed=step, total=total,
                                  info=self._trial_info())

    def on_eval(self, step: int, metrics: dict) -> None:
        self.last_epoch = metrics.get("epoch")
        self.last_score = metrics.get(self.metric) if self.metric else None
        if self.trial_task is not None:
            self.trial_bar.update(self.trial_task, info=self._trial_info())

    def on_trial(self, report) -> None:
        """After each trial (the search's ``on_trial``)."""
        self.metric = self.metric or report.metric
        text = outcome(report, self.last_epoch if report.state == "PRUNED" else None)
        self.finished.append((report, text))
        if report.is_best:
            self.best = report.number
        if self.mode == MODE_PLAIN:
            console.print(plain_line(report, text), highlight=False, soft_wrap=True)

    # -- drawing -----------------------------------------------------------------------------

    def _trial_info(self) -> str:
        parts = [] if self.loss is None else [f"train loss {self.loss:.4f}"]
        if self.last_score is not None and self.last_epoch is not None:
            parts.append(f"{self.metric} {self.last_score:.4f} at epoch {self.last_epoch:g}")
        return escape("  ".join(parts))

    def _render(self):
        parts: list[Any] = []
        if self.finished:
            parts.append(self.table())
        if self.budget_task is not None:
            elapsed = time.monotonic() - self.started
            done = len(self.finished)
            if self.seconds is not None:
                trials = f"{done} trial{'s' if done != 1 else ''} done"
                self.bars.update(self.budget_task, completed=min(elapsed, self.seconds),
                                 done=trials, note=f"{max(0, self.seconds - elapsed):.0f}s left")
            elif self.trials_left:
                self.bars.update(self.budget_task, completed=done,
                                 done=f"{done}/{self.trials_left} trials", note="")
            parts.append(self.bars)
        if self.current is not None and self.trial_task is not None:
            parts.append(self.trial_bar)
        return Group(*parts)

    def table(self) -> Table:
        """The finished trials: number, outcome, score, parameters, seconds; best marked."""
        table = Table(title="finished trials", title_justify="left", expand=False)
        table.add_column("trial", justify="right")
        table.add_column("outcome")
        table.add_column(self.metric or "score", justify="right")
        table.add_column("parameters", overflow="fold")
        table.add_column("time", justify="right")
        rows = self.finished[-TABLE_ROWS:]
        if self.best is not None and all(r.number != self.best for r, _ in rows):
            rows = [next((r, t) for r, t in self.finished if r.number == self.best)] + rows[1:]
        for report, text in rows:
            best = report.number == self.best
            color = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(report.state, "")
            table.add_row(
                f"{report.number}{' *' if best else ''}",
                f"[{color}]{escape(text)}[/]" if color else escape(text),
                f"{report.value:.4f}" if report.value is not None else "",
                escape(" ".join(f"{k}={short(v)}" for k, v in report.params.items())),
                f"{report.seconds:.0f}s" if report.seconds is not None else "",
                style="bold" if best else None,
            )
        if self.best is not None:
            table.caption = f"* best so far: trial {self.best} (its model is in best/)"
            table.caption_justify = "left"
        return table


def plain_line(report, text: str) -> str:
    """One line for a finished trial: number, outcome, score, parameters, seconds, best mark."""
    value = f"{report.metric} {report.value:.4f}" if report.value is not None else ""
    params = escape(" ".join(f"{k}={short(v)}" for k, v in report.params.items()))
    seconds = f"{report.seconds:.0f}s" if report.seconds is not None else ""
    best = "  * best" if report.is_best else ""
    return f"trial {report.number:>3}  {escape(text):<20} {value:<18} {params}  {seconds}{best}"
