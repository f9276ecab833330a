"""The run's ETA that `execute` shows: the cost model's estimate of what is left."""

from __future__ import annotations

import io
from dataclasses import dataclass

from s2d_plan.run.progress import PlainDisplay, remaining_seconds


@dataclass
class St:
    status: str
    est: float | None
    spent: float | None = None
    tail: object = None

    @property
    def stage(self):
        return type("S", (), {"id": f"s{id(self)}", "kind": "grpo", "params": None})()

    def est_seconds(self):
        return self.est

    def elapsed(self):
        return self.spent

    def total_steps(self):
        return None


def test_remaining_counts_pending_in_full_and_running_less_elapsed():
    states = [St("FINISHED", 100, 120), St("RUNNING", 60, 45), St("PENDING", 30), St("PENDING", None)]
    assert remaining_seconds(states) == 15 + 30
    assert remaining_seconds([St("RUNNING", 10, 25)]) == 0  # over its estimate: not negative
    assert remaining_seconds([St("PENDING", None)]) is None


def test_plain_progress_lines_carry_the_run_eta():
    out = io.StringIO()
    d = PlainDisplay(out=out, every_s=0)
    states = [St("RUNNING", 600, 60), St("PENDING", 300)]
    d.refresh(states)
    d.refresh(states)
    assert "run ETA 14:00" in out.getvalue()
