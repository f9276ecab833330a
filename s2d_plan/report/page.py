"""The report page: one HTML document, plotly.js inlined, nothing fetched from anywhere.

``build_report`` gathers the charts of some runs; ``render_html`` writes the page. The
page records what it drew for a browser test to check: every chart's section carries
``data-chart`` (its id) and ``data-series`` (its number of traces), and a small script
that runs before anything else copies uncaught errors and ``console.error`` calls into
the ``data-errors`` attribute of ``<html>``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass, field

from s2d_plan.contract import short_name
from s2d_plan.report import charts as C
from s2d_plan.report.data import Residual, RunData

# Runs before plotly: what the browser test reads back from the DOM.
_ERROR_HOOK = """<script>
window.__s2dErrors = [];
function __s2dMark() { document.documentElement.setAttribute('data-errors', JSON.stringify(window.__s2dErrors)); }
window.addEventListener('error', function (e) { window.__s2dErrors.push(String(e.message || e)); __s2dMark(); });
window.addEventListener('unhandledrejection', function (e) { window.__s2dErrors.push(String(e.reason)); __s2dMark(); });
(function () { var err = console.error; console.error = function () {
  window.__s2dErrors.push(Array.prototype.join.call(arguments, ' ')); __s2dMark(); return err.apply(console, arguments); };
})();
__s2dMark();
</script>"""
_DONE = """<script>
document.documentElement.setAttribute('data-charts', document.querySelectorAll('.js-plotly-plot').length);
</script>"""
_STYLE = """<style>
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; font-size: 13px; } pre { background: #f8f8f8; padding: 8px; font-size: 12px; overflow-x: auto; }
.status-FINISHED, .status-CACHED { color: #2ca02c; } .status-FAILED, .status-KILLED { color: #d62728; }
.status-RUNNING { color: #1f77b4; }
</style>"""


@dataclass
class Report:
    runs: list[RunData]
    sections: list[tuple[str, list[C.Chart], str]] = field(default_factory=list)  # (heading, charts, html)

    @property
    def charts(self) -> list[C.Chart]:
        return [c for _, charts, _ in self.sections for c in charts]


def build_report(runs: list[RunData], residuals: list[Residual] | None = None,
                 calibration: dict | None = None) -> Report:
    """Every section of the page, in reading order."""
    rep = Report(runs)
    rep.sections.append(("Runs", [], _runs_table(runs)))
    for run in runs:
        rep.sections.append((f"Pipeline: {run.label}", C.pipeline(run), _stage_table(run)))
    rep.sections.append(("Plan vs outcome", C.objective(runs) + C.resources(runs), ""))
    rep.sections.append(("Training curves", C.curves(runs), ""))
    rep.sections.append(("Evaluations", C.evals(runs), ""))
    for run in runs:
        alts = C.alternatives(run)
        if alts:
            rep.sections.append((f"Alternatives: {run.label}", alts, _rationale(run)))
    if calibration is not None:
        rep.sections.append(("Calibration", C.residuals(residuals or []), _calibration_text(calibration)))
    return rep


def render_html(rep: Report, title: str, plotly_src: str | None = None, refresh_s: float | None = None) -> str:
    """The page. ``plotly_src``: a URL to load plotly.js from (the live server), else inlined."""
    import plotly.offline

    plotly_tag = (f'<script src="{html.escape(plotly_src)}"></script>' if plotly_src else
                  f"<script>{plotly.offline.get_plotlyjs()}</script>")
    reload = (f"<script>setTimeout(function () {{ location.reload(); }}, {int(refresh_s * 1000)});</script>"
              if refresh_s else "")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    live = f" · refreshes every {refresh_s:g}s from the history's live snapshot" if refresh_s else ""
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="muted">s2d-plan report · built {now}{live}</p>']
    for heading, charts, extra in rep.sections:
        if not charts and not extra:
            continue
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(extra)
        for chart in charts:
            div = chart.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{chart.id}",
                                       config={"displaylogo": False, "responsive": True})
            body.append(f'<section class="chart" data-chart="{html.escape(chart.id)}" '
                        f'data-series="{chart.series}">{div}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\">{_STYLE}{_ERROR_HOOK}{plotly_tag}"
            "</head>\n<body>\n"
            + "\n".join(body) + f"\n{_DONE}{reload}\n</body></html>\n")


# ------------------------------------------------------------------ tables


def _table(cols: list[str], rows: list[list], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    lines = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            if isinstance(v, tuple):  # (text, css class)
                cells.append(f'<td class="{v[1]}">{html.escape(str(v[0]))}</td>')
            else:
                cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>" + "".join(lines) + "</table>"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.1%}"


def _runs_table(runs: list[RunData]) -> str:
    """Side by side: one row per run."""
    rows = []
    for r in runs:
        p = r.raw_graph.get("predicted") or {}
        m = r.measured_objective()
        band = f"{_pct(p.get('value'))} [{_pct(p.get('low'))}, {_pct(p.get('high'))}]" if p else ""
        est = (r.raw_graph.get("estimated") or {}).get("gpu_hours")
        got = sum(s.gpu_hours or 0 for s in r.stages)
        took = (r.end - r.start).total_seconds() if r.end and r.start else None
        labels = sum(((st.get("data") or {}).get("labeled") or {}).get("count", 0)
                     for st in r.raw_graph.get("stages") or []
                     if ((st.get("data") or {}).get("labeled") or {}).get("spend", True))
        rows.append([r.run_id, r.plan, r.meta.get("arm") or r.meta.get("structure") or "", (r.status, f"status-{r.status}"),
                     p.get("eval") or r.objective or "", band, _pct(m[1]) if m else "", est, got, took, labels])
    return _table(["run", "plan", "pipeline", "status", "objective", "predicted [interval]", "measured",
                   "est GPU-h", "GPU-h", "seconds", "labels"], rows, numeric={5, 6, 7, 8, 9, 10})


def _stage_table(run: RunData) -> str:
    rows = []
    for s in run.stages:
        est = run.estimate(s.stage_id)
        finals = [f"{k.split('/', 1)[1] if k.startswith('eval/') else k}={v:.3g}" for (sid, k), pts in run.curves.items()
                  if sid == s.stage_id and pts and pts[-1][1] is not None and
                  (k.startswith(("eval/", "probe/")) or k in ("reward", "loss", "verifier/accuracy"))
                  for v in [pts[-1][1]]]
        rows.append([s.stage_id, s.kind, short_name(s.policy), (s.status, f"status-{s.status}"), s.attempt,
                     s.est_gpu_hours, s.gpu_hours, s.wall_s, est.get("peak_mem_gb_per_gpu"),
                     run.last(s.stage_id, "sys/peak_mem_gb"), " ".join(sorted(finals))])
    table = _table(["stage", "kind", "policy", "status", "attempt", "est GPU-h", "GPU-h", "seconds",
                    "est GB/GPU", "peak GB", "final metrics"], rows, numeric={4, 5, 6, 7, 8, 9})
    errors = "".join(f"<p><b>{html.escape(s.stage_id)} {s.status}</b></p><pre>{html.escape(s.error)}</pre>"
                     for s in run.stages if s.error)
    return table + errors


def _rationale(run: RunData) -> str:
    lines = [x for x in run.meta.get("rationale") or [] if isinstance(x, str)]
    if not lines:
        return ""
    return "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"


def _calibration_text(fit: dict) -> str:
    if not fit:
        return '<p class="muted">a calibration file is in force, without a fit summary</p>'
    keep = {k: fit[k] for k in ("time", "runs", "fitted", "rmse_before", "rmse_after") if k in fit}
    return f"<pre>{html.escape(json.dumps(keep, indent=1, default=str))}</pre>"
