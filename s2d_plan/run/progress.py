"""Progress of an execute: a live rich table on a terminal, plain log lines otherwise.

Both take the executor's stage states (anything with ``stage``, ``status``, ``attempt``,
``tail``, ``elapsed()``, ``est_seconds()``) and never touch the history or processes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

STATUS_STYLE = {"PENDING": "dim", "RUNNING": "bold cyan", "FINISHED": "green", "CACHED": "green",
                "FAILED": "bold red", "SKIPPED": "yellow", "KILLED": "bold magenta"}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _step(st: Any) -> str:
    last = st.tail.last_step if st.tail else None
    total = st.total_steps()
    if st.status == "FINISHED" and total:  # a runner that logs sparsely still ran every step
        return f"{total}/{total}"
    if last is None:
        return "-"
    return f"{last + 1}/{total}" if total else str(last + 1)


def _metric(st: Any) -> str:
    metric = st.tail.last_metric if st.tail else None
    if not metric:
        return ""
    key, value = metric
    return f"{key}={value:.4g}" if value is not None else f"{key}=null"


def remaining_seconds(states: Iterable[Any]) -> float | None:
    """The cost model's estimate of the time left: pending stages in full, running ones
    less their elapsed time (never below zero); None when no stage has an estimate."""
    left, known = 0.0, False
    for st in states:
        est = st.est_seconds()
        if est is None or st.status not in ("PENDING", "RUNNING"):
            continue
        known = True
        left += max(est - (st.elapsed() or 0.0), 0.0) if st.status == "RUNNING" else est
    return left if known else None


class PlainDisplay:
    """One line per event, and a progress line per running stage every ``every_s``."""

    def __init__(self, out=None, every_s: float = 30.0):
        self.out = out or sys.stdout
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def event(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=self.out, flush=True)

    def refresh(self, states: Iterable[Any]) -> None:
        states = list(states)
        now = time.monotonic()
        for st in states:
            if st.status != "RUNNING":
                continue
            if now - self._last.setdefault(st.stage.id, now) >= self.every_s:
                self._last[st.stage.id] = now
                self.event(f"{st.stage.id}: step {_step(st)} {_metric(st)} "
                           f"elapsed {_clock(st.elapsed())} est {_clock(st.est_seconds())}; "
                           f"run ETA {_clock(remaining_seconds(states))}")


class LiveDisplay:
    """A rich Live table: stage, kind, status, step, key metric, elapsed / estimated."""

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.title = title
        self._states: list[Any] = []
        self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                          get_renderable=self._render)

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def event(self, message: str) -> None:
        # markup off: stage names and argv may hold brackets
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {message}", markup=False, highlight=False)

    def refresh(self, states: Iterable[Any]) -> None:
        self._states = list(states)

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        left = remaining_seconds(self._states)
        caption = f"about {_clock(left)} left (the cost model's estimate)" if left is not None else None
        table = Table(title=self.title, caption=caption, expand=False)
        for col in ("stage", "kind", "status", "try", "step", "metric", "elapsed / est"):
            table.add_column(col)
        for st in self._states:
            style = STATUS_STYLE.get(st.status, "")
            # Text cells, never markup strings: a cell is shown as written in every frame
            table.add_row(Text(st.stage.id), Text(st.stage.kind), Text(st.status, style=style),
                          Text(str(st.attempt or "-")), Text(_step(st)), Text(_metric(st)),
                          Text(f"{_clock(st.elapsed())} / {_clock(st.est_seconds())}"))
        return table


def make_display(title: str, live: bool | None = None):
    """The live table on a terminal, plain lines otherwise (or as ``live`` says)."""
    if live is None:
        live = sys.stdout.isatty()
    return LiveDisplay(title) if live else PlainDisplay()
