"""The live table shows statuses as words, never as raw markup, and a FINISHED stage's full step count."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from s2d_plan.run.progress import LiveDisplay


def _state(sid, status, last_step, total):
    return SimpleNamespace(stage=SimpleNamespace(id=sid, kind="fkl"), status=status, attempt=1,
                           tail=SimpleNamespace(last_step=last_step, last_metric=("loss", 0.5)),
                           total_steps=lambda: total, elapsed=lambda: 3.0, est_seconds=lambda: 10.0)


def test_live_table_has_no_raw_markup_and_counts_finished_steps():
    display = LiveDisplay("run")
    display.refresh([_state("fkl[0]", "FINISHED", 0, 128), _state("b", "CACHED", None, None),
                     _state("c", "RUNNING", 4, 10)])
    console = Console(width=200, record=True, force_terminal=True)
    console.print(display._render())
    text = console.export_text()
    assert "[green]" not in text and "[/]" not in text and "[bold cyan]" not in text
    assert "fkl[0]" in text and "CACHED" in text and "RUNNING" in text
    assert "128/128" in text and "5/10" in text and "1/128" not in text
