"""``execute --dry-run``: the order, each stage's command and estimate; nothing runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from s2d_plan.contract import Stage, is_complete
from s2d_plan.errors import GraphError
from s2d_plan.graph import StageGraph
from s2d_plan.paths import attempt_file, resolve_home, stage_dir
from s2d_plan.run.identity import cache_keys
from s2d_plan.run.launch import stage_command


@dataclass(frozen=True)
class DryRunStage:
    stage: Stage
    key: str
    state: str  # cached | forced | would run
    argv: list[str]


def dry_run(graph: StageGraph, home: Path | str | None = None, force: Iterable[str] = ()) -> list[DryRunStage]:
    """What ``execute`` would do, in order, without running anything."""
    home = resolve_home(home)
    keys = cache_keys(graph)
    forced = set(force)
    for f in force:
        if f not in keys:
            raise GraphError(f"--force names no stage of this graph: {f}")
        forced |= graph.dependants(f)
    out = []
    for s in graph.topological_order():
        cached = s.id not in forced and is_complete(stage_dir(home, s.id, keys[s.id]))
        argv = stage_command(s.kind, attempt_file(home, "<run_id>", s.id, 1, "spec.json"), max(s.resources.gpus, 1))
        out.append(DryRunStage(s, keys[s.id], "cached" if cached else "forced" if s.id in forced else "would run",
                               argv))
    return out
