"""The comparison report: ``analysis`` (pure functions over run records), ``plots``
(matplotlib) and ``render`` (one Jinja2 template for HTML, Markdown, CSV)."""

from tunelab.report.render import build_report

__all__ = ["build_report"]
