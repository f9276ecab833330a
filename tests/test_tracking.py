"""Trackers: a plan's `tracking.report_to` reaches TRL through the stage spec file (not the
params: cache keys do not change), a missing tracker package is a validate error, and
trackio (local-first) receives a real runner's metrics offline, named by run and stage."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, sim_stage

TRACKED = "\ntracking: {report_to: [trackio], project: tiny-tracked}\n"


def _plan(tmp_path: Path, extra: str) -> Path:
    text = (REPO / "plans" / "tiny-cpu.yaml").read_text().replace("../tiny-models", str(REPO / "tiny-models"))
    path = tmp_path / "plan.yaml"
    path.write_text(text + extra)
    return path


def test_tracking_reaches_the_graph_but_not_plan_hash_or_cache_keys(tmp_path):
    pytest.importorskip("trackio")
    from s2d_plan.api import recommend
    from s2d_plan.plan.spec import load_plan
    from s2d_plan.run.identity import cache_keys

    plain, tracked = load_plan(_plan(tmp_path, "")), load_plan(_plan(tmp_path, TRACKED))
    assert tracked.tracking.report_to == ["trackio"] and plain.hash() == tracked.hash()
    g0 = recommend(plain, home=tmp_path / "h", trials=20).graph
    g1 = recommend(tracked, home=tmp_path / "h", trials=20).graph
    assert g0.tracking is None and g1.tracking.report_to == ("trackio",) and g1.tracking.project == "tiny-tracked"
    assert cache_keys(g0) == cache_keys(g1)
    assert json.loads(g1.to_json())["tracking"] == {"report_to": ["trackio"], "project": "tiny-tracked"}


def test_a_tracker_that_is_not_installed_is_a_validate_error(cli, tmp_path, s2d_home):
    missing = [t for t, mod in (("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard"))
               if importlib.util.find_spec(mod) is None]
    if not missing:
        pytest.skip("every tracker is installed here")
    plan = _plan(tmp_path, f"\ntracking: {{report_to: [{missing[0]}]}}\n")
    for verb in ("validate", "recommend", "execute"):
        r = cli(verb, str(plan))
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert f"{missing[0]} not installed" in r.stderr and "tracking.report_to" in r.stderr, r.stderr
    assert not s2d_home.exists()  # execute refused before any run started
    r = cli("validate", str(_plan(tmp_path, "\ntracking: {report_to: [neptune]}\n")))
    assert r.returncode == 2 and "report_to" in r.stderr


def test_the_executor_writes_tracking_into_each_stage_spec(tmp_path, write_graph, cli, s2d_home):
    g = write_graph([sim_stage("a", steps=2)], tracking={"report_to": ["mlflow"], "project": "p"})
    assert cli("execute", str(g)).returncode == 0
    spec = json.loads(next((s2d_home / "runs").glob("*/a.1.spec.json")).read_text())
    assert spec["tracking"] == {"report_to": ["mlflow"], "project": "p"}


def test_trackio_receives_a_grpo_stage_offline(tiny, tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("trackio")
    d = tmp_path / "grpo"
    spec = {"run_id": "run1", "attempt": 1, "device": "cpu", "output_dir": str(d / "out"),
            "work_dir": str(d / "out.partial"), "metrics_path": str(d / "metrics.jsonl"),
            "inputs": {"policy": str(tiny / "teacher")},
            "tracking": {"report_to": ["trackio"], "project": "tiny-tracked"},
            "stage": {"id": "teacher_grpo", "kind": "grpo", "policy": str(tiny / "teacher"),
                      "data": {"labeled": {"source": str(tiny / "data/labeled.jsonl"), "offset": 0, "count": 8}},
                      "params": {"steps": 2, "num_generations": 4, "prompts_per_step": 2,
                                 "max_completion_length": 16}}}
    d.mkdir()
    (d / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "runners.grpo", str(d / "spec.json")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with sqlite3.connect(tmp_path / "trackio" / "tiny-tracked.db") as con:
        rows = con.execute("SELECT run_name, step, metrics FROM metrics").fetchall()
    assert {name for name, _, _ in rows} == {"run1/teacher_grpo"}
    logged = {k for _, _, m in rows for k in json.loads(m)}
    assert {"train/reward", "train/loss", "train/verifier/accuracy"} <= logged  # the Trainer prefixes train/
    # the history's own stream is unchanged: the tracker is a copy, not the source
    ours = [json.loads(line)["key"] for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert "reward" in ours and "sys/peak_mem_gb" in ours
