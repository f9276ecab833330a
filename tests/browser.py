"""A real browser for the report tests: Debian's headless ``chromium``, no driver download.

``render(url)`` loads a page, lets its scripts run (virtual time, so plotly finishes
drawing), and returns the DOM as the browser left it plus what it logged; ``screenshot``
writes a PNG. ``make test`` installs chromium when it is missing; run directly, a test
skips without it unless S2D_REQUIRE_BROWSER=1 (the Makefile sets it) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio", "--no-first-run"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("S2D_REQUIRE_BROWSER") == "1":
        pytest.fail("no chromium on this machine (make test installs it: apt-get install -y chromium)")
    pytest.skip("no chromium on this machine (apt-get install -y chromium)")


def _run(args: list[str], budget_ms: int = 30000, timeout: float = 120) -> subprocess.CompletedProcess:
    # virtual time: the page's scripts (plotly drawing) run to completion, however slow the machine
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state between tests
        return subprocess.run([chromium(), *FLAGS, f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}",
                               "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True,
                              timeout=timeout)


def render(url: str, budget_ms: int = 30000) -> tuple[str, str]:
    """(the DOM after the page's scripts ran, chromium's log)."""
    r = _run(["--dump-dom", url], budget_ms)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def screenshot(url: str, out: Path, width: int = 1280, height: int = 2400) -> Path:
    r = _run([f"--window-size={width},{height}", f"--screenshot={out}", url])
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    return out


def console_errors(log: str) -> list[str]:
    """Lines where the page itself logged an error (chromium prefixes them CONSOLE)."""
    return [line for line in log.splitlines() if "CONSOLE" in line and ("rror" in line or "Uncaught" in line)]


@dataclass
class Chart:
    id: str
    series: int  # traces the page says it drew (data-series)
    traces: int  # trace groups the browser rendered into the chart's SVG
    painted: int  # SVG paths with a non-empty outline (lines, markers, bars)


class _Charts(HTMLParser):
    """Walks the dumped DOM: per ``section.chart``, counts plotly's trace groups and paths."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self.html_attrs: dict[str, str] = {}
        self._depth = 0
        self._open: Chart | None = None
        self._open_depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html_attrs = {k: v or "" for k, v in attrs}
        if tag in ("path", "img", "br", "meta", "input", "link", "rect", "line", "circle", "text"):
            self._count(tag, a)
            return  # void or leaf elements in practice: do not track depth
        self._depth += 1
        if tag == "section" and "data-chart" in a:
            self._open = Chart(a["data-chart"], int(a.get("data-series", "0")), 0, 0)
            self._open_depth = self._depth
            self.charts.append(self._open)
        self._count(tag, a)

    def _count(self, tag, a):
        if self._open is None:
            return
        classes = (a.get("class") or "").split()
        if tag == "g" and "trace" in classes:
            self._open.traces += 1
        if tag == "path" and len((a.get("d") or "").strip()) > 4:
            self._open.painted += 1

    def handle_endtag(self, tag):
        if tag in ("path", "img", "br", "meta", "input", "link", "rect", "line", "circle", "text"):
            return
        if self._open is not None and self._depth == self._open_depth and tag == "section":
            self._open = None
        self._depth -= 1


def charts_in(dom: str) -> tuple[list[Chart], dict[str, str]]:
    """Every chart section of a dumped report, and the attributes of its <html>."""
    p = _Charts()
    p.feed(dom)
    return p.charts, p.html_attrs


def non_blank(png: Path) -> int:
    """How many distinct colours a screenshot has (a blank page has one or two)."""
    from PIL import Image

    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours else 1 << 20
