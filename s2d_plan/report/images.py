"""PNG export of every chart of a report, through plotly's own exporter (kaleido).

kaleido drives a headless Chrome or Chromium that it finds on the machine (Debian's
``chromium`` package serves; ``make test`` installs it); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from s2d_plan.errors import S2DError
from s2d_plan.report.page import Report


def export_pngs(rep: Report, out_dir: str | Path, scale: float = 2.0) -> list[Path]:
    """Write ``<out_dir>/<chart id>.png`` for every chart; return the paths."""
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError:
        raise S2DError("--png needs kaleido (pip install 'kaleido>=1.0') and a Chrome or Chromium "
                       "(on Debian: apt-get install chromium)") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{chart.id}.png" for chart in rep.charts]
    if not paths:
        return []
    try:  # one browser for every chart
        pio.write_images([c.figure for c in rep.charts], paths, scale=scale, width=1000)
    except Exception as exc:  # kaleido's errors name the missing browser
        raise S2DError(f"PNG export failed: {type(exc).__name__}: {exc} (kaleido needs a Chrome or Chromium: "
                       "on Debian, apt-get install chromium)") from None
    return paths
