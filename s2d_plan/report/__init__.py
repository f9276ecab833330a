"""``s2d-plan report``: a run's story (plan vs outcome, curves, where the GPU-hours went,
the alternatives) as one self-contained HTML page, built from the history alone.

``data`` reads the history, ``charts`` draws plotly figures, ``page`` writes the HTML,
``serve`` shows it live on localhost while a run goes on, ``images`` exports PNGs.
"""

from __future__ import annotations

from pathlib import Path

from s2d_plan.report.data import calibration_residuals, load_runs
from s2d_plan.report.page import Report, build_report, render_html

__all__ = ["make_report", "page_title", "render_html"]


def make_report(runs: list[str], home: str | Path | None = None) -> Report:
    """The report of the named runs (unique prefixes; the newest run when none)."""
    data = load_runs(runs, home)
    fit, residuals = calibration_residuals(home)
    return build_report(data, residuals, fit if fit is not None or residuals else None)


def page_title(rep: Report) -> str:
    if len(rep.runs) == 1:
        r = rep.runs[0]
        return f"{r.plan}: run {r.run_id} ({r.status})"
    return f"{len(rep.runs)} runs: " + ", ".join(dict.fromkeys(r.plan for r in rep.runs))
