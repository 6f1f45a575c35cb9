"""The teacher-student comparison of ``pretune distill``, as table rows from ``distill.yaml``."""

from __future__ import annotations

from typing import Any, Mapping

COLUMNS = ("model", "layers", "parameters", "MB", "metric", "examples/s")


def comparison_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (teacher, student, student / teacher) of a distill report."""
    metric = str(report.get("metric", "metric"))
    columns = [c if c != "metric" else metric for c in COLUMNS]
    rows = []
    for name in ("teacher", "student"):
        row = report.get(name) or {}
        rows.append([name, _text(row.get("layers")), f"{row.get('parameters', 0):,}",
                     _number(row.get("size_mb"), 1), _number(row.get(metric), 4),
                     _number(row.get("examples_per_s"), 1)])
    ratios = report.get("ratios") or {}
    difference = ratios.get(f"{metric}_difference")
    rows.append(["student / teacher", "", _times(ratios.get("parameters")),
                 _times(ratios.get("size_mb")),
                 "" if difference is None else f"{difference:+.4f}",
                 _times(ratios.get("speedup"))])
    return columns, rows


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def _times(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}x"
