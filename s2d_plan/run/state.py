"""What the executor knows about a run while it goes: one ``StageState`` per stage, and
the ``RunResult`` it returns."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_plan.contract import Stage
from s2d_plan.run.launchers import Handle, Slot
from s2d_plan.run.procs import MetricTail


# -- state of one stage during a run ---------------------------------------------------
@dataclass
class StageState:
    stage: Stage
    key: str
    output_dir: Path
    status: str = "PENDING"
    attempt: int | None = None
    forced: bool = False
    proc: Handle | None = None  # the launcher's handle: poll / wait / signal, placements
    tail: MetricTail | None = None
    slot: Slot = Slot()  # where the launcher put it (local GPU ids, or nodes x GPUs)
    retries: int = 0  # attempts restarted because their node was lost
    avoid: set[str] = field(default_factory=set)  # nodes those lost attempts ran on
    started: float | None = None
    ended: float | None = None
    buffered: list[str] = field(default_factory=list)  # metric lines not yet in the history
    spec_path: Path | None = None
    log_path: Path | None = None
    error: str | None = None
    aside: Path | None = None  # a forced stage's previous output, until the new one completes

    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started

    def est_seconds(self) -> float | None:
        hours = self.stage.estimated.gpu_hours
        return hours * 3600 / max(self.stage.resources.gpus, 1) if hours else None

    def total_steps(self) -> int | None:
        steps = getattr(self.stage.params, "steps", None)
        return steps if isinstance(steps, int) else None


@dataclass
class RunResult:
    run_id: str
    status: str  # FINISHED / FAILED / KILLED
    stages: dict[str, str]  # stage id -> final status
    failures: list[str]  # one line per failed or killed stage
    exit_code: int
    home: Path


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) turned into a request the run loop
    polls: ``signal`` once asked, ``deadline`` set to 0 by a second Ctrl-C (stop now)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.deadline: float | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            self._old = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            self.deadline = 0.0
        self.signal = signum
