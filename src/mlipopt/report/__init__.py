"""Reports: tables and figures of a study from its results database."""

from .build import mae_table, make_report

__all__ = ["mae_table", "make_report"]
