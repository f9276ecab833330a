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


def test_a_runner_works_in_its_run_folder_and_reads_relative_paths_from_the_callers(tmp_path, monkeypatch):
    from s2d_plan.contract.files import caller_path
    from s2d_plan.run import procs

    (tmp_path / "data.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "home" / "runs" / "r" / "a.1.log"
    code = ("import os; from s2d_plan.contract.files import caller_path; "
            "print(os.getcwd()); print(caller_path('data.jsonl'))")
    assert procs.start([sys.executable, "-P", "-c", code], log).wait(timeout=60) == 0
    assert log.read_text().split() == [str(log.parent), str(tmp_path / "data.jsonl")]
    assert caller_path("org/name") == "org/name"
