"""The teacher-student comparison of ``pretune distill``, as table rows from ``distill.yaml``."""

from __future__ import annotations

from typing import Any, Mapping

def comparison_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (teacher, student, student / teacher) of a distill report: layers,
    parameters, size, a column for each metric of ``report["metrics"]`` (the task's main
    metrics and the run's; the run's metric alone in a report written before it existed), and
    speed."""
    metric = str(report.get("metric", "metric"))
    names = [str(m) for m in report.get("metrics") or [metric]]
    columns = ["model", "layers", "parameters", "MB", *names, "examples/s"]
    rows = []
    for name in ("teacher", "student"):
        row = report.get(name) or {}
        rows.append([name, _text(row.get("layers")), f"{row.get('parameters', 0):,}",
                     _number(row.get("size_mb"), 1), *(_number(row.get(m), 4) for m in names),
                     _number(row.get("examples_per_s"), 1)])
    ratios = report.get("ratios") or {}
    differences = [ratios.get(f"{m}_difference") for m in names]
    rows.append(["student / teacher", "", _times(ratios.get("parameters")),
                 _times(ratios.get("size_mb")),
                 *("" if d is None else f"{d:+.4f}" for d in differences),
                 _times(ratios.get("speedup"))])
    return columns, rows


def by_model(columns: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The table turned: one column per model (teacher, student, student / teacher) and one row
    per quantity, so that it stays as narrow as a terminal however many metrics it has."""
    return ([""] + [row[0] for row in rows],
            [[column] + [row[j] for row in rows] for j, column in enumerate(columns) if j])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def _times(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}x"
