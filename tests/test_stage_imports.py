"""Issue 23 finding 1: stage and verifier processes import nothing from the directory
where ``s2d-plan execute`` runs (a planted ``runners/`` used to run inside every stage)."""

from __future__ import annotations

import sys

from conftest import sim_stage

from s2d_plan.graph import load_graph
from s2d_plan.run.executor import execute_graph
from s2d_plan.run.progress import PlainDisplay


def plant(cwd, marker) -> None:
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for rel in ("runners/__init__.py", "runners/common.py", "runners/eval.py", "runners/verifier.py"):
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_text(code)


def test_a_stage_imports_nothing_from_the_working_directory(write_graph, s2d_home, tmp_path, monkeypatch):
    cwd, marker = tmp_path / "evil", tmp_path / "pwned"
    plant(cwd, marker)
    graph = load_graph(write_graph([sim_stage("a", steps=2)]))
    monkeypatch.chdir(cwd)
    result = execute_graph(graph, s2d_home, display=PlainDisplay(every_s=1e9))
    assert result.exit_code == 0 and set(result.stages.values()) == {"FINISHED"}
    assert not marker.exists(), marker.read_text()


def test_verifier_workers_import_nothing_from_the_working_directory(tmp_path, monkeypatch):
    from runners import verifier

    cwd, marker = tmp_path / "evil", tmp_path / "pwned"
    plant(cwd, marker)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    worker = verifier._Worker(5.0)
    try:
        worker.proc.stdin.close()
        worker.proc.wait(timeout=60)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert not marker.exists(), marker.read_text()
