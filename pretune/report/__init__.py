"""Reports of a search, from its run directory: the HTML page (``write_report``) and the tables
that ``pretune show`` and ``pretune export`` print. Nothing here trains or loads a model."""

from pretune.report.html import write_report

__all__ = ["write_report"]
