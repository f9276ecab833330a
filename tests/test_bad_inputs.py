"""Inputs that used to pass validation and crash later (issue 13, list 7): each is now
refused before anything runs, with exit 2, one clear message, and nothing RUNNING."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest
from conftest import REPO, cli_env


def stage(sid: str, **fields) -> dict:
    return {"id": sid, "kind": "simulate", "policy": "m", **fields}


def graph(*stages: dict, **top) -> dict:
    return {"plan": "p", "stages": list(stages), **top}


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_GRAPHS = {
    "id_300_chars": (graph(stage("a" * 300)), "at most 64 characters"),
    "id_10000_chars": (graph(stage("a" * 10_000)), "at most 64 characters"),
    "id_with_shell": (graph(stage("a; rm -rf ~")), "should match pattern"),
    "gpus_1e12": (graph(stage("a", resources={"gpus": 1e12})), "resources.gpus"),
    "trials_not_numbers": (graph(stage("a"), meta={"trials": [{"number": "first", "value": "high"}]}),
                           "meta.trials[0].number"),
    "trials_1e30": (graph(stage("a"), meta={"trials": [{"number": 1, "value": 1e30}]}), "meta.trials[0].value"),
    "grpo_steps_10_400": (graph({"id": "a", "kind": "grpo", "policy": "m", "params": {"steps": 10**400}}),
                          "an integer of 401 digits"),
    "estimate_1e400": (graph(stage("a", estimated={"gpu_hours": "1e400"})), "estimated.gpu_hours"),
    "params_nested_900": (graph(stage("a", params={"evidence": {"x": nested(900)}})), "nested more than 32"),
    "needs_nested_900": (graph(stage("a", needs=nested(900))), "nested more than 32"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_bad_graph_is_refused_before_anything_runs(case, tmp_path, s2d_home, cli):
    content, message = BAD_GRAPHS[case]
    path = tmp_path / f"{case}.json"
    text = json.dumps(content)
    if case == "estimate_1e400":
        text = text.replace('"1e400"', "1e400")  # a JSON number beyond any float: reads as inf
    path.write_text(text)
    for verb in ("validate", "execute"):
        proc = cli(verb, str(path))
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr) < 2000  # the hostile value is not echoed whole
    assert not (s2d_home / "history.duckdb").exists()  # nothing ran, nothing RUNNING


def test_a_1000_stage_chain_listed_in_reverse_runs_its_order(tmp_path, cli):
    chain = [stage(f"s{i}", needs=[f"s{i - 1}"] if i else []) for i in reversed(range(1000))]
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(graph(*chain)))
    proc = cli("validate", str(path))
    assert proc.returncode == 0 and "valid, 1000 stages" in proc.stdout, proc.stderr
    dry = cli("execute", "--dry-run", str(path))
    assert dry.returncode == 0, dry.stderr
    order = [line.split()[1] for line in dry.stdout.splitlines() if line[:1].isdigit() and ". s" in line]
    assert order[:3] == ["s0", "s1", "s2"] and order[-1] == "s999"


def plan_text(**replace: str) -> str:
    text = (REPO / "plans" / "tiny-cpu.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


BAD_PLANS = {
    "compute_gpus_1e30": (plan_text(**{"gpus: 1,": "gpus: 1e30,"}), "compute.gpus"),
    "compute_gpus_10_30": (plan_text(**{"gpus: 1,": "gpus: 1" + "0" * 30 + ","}), "compute.gpus"),
    "hours_10_400": (plan_text(**{"hours: 0.05": "hours: 1" + "0" * 400}), "compute.hours"),
    "digits_5000": (plan_text(**{"hours: 0.05": "hours: 1" + "0" * 5000}), "characters is not a plan value"),
    "deep_yaml": (plan_text() + "extra: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 32 levels"),
    "deep_block_yaml": (plan_text() + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
                        "nested more than 32 levels"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plan_is_refused_by_validate_and_recommend(case, tmp_path, cli, s2d_home):
    text, message = BAD_PLANS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    for verb in ("validate", "recommend", "execute"):
        proc = cli(verb, str(path))
        assert proc.returncode == 2, (verb, proc.stdout[-500:], proc.stderr[-2000:])
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr) < 2000
    assert not (s2d_home / "history.duckdb").exists()


def test_a_home_under_a_read_only_parent_is_a_clear_error(tmp_path, write_graph):
    parent = tmp_path / "ro"
    parent.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)],
                             capture_output=True).returncode == 0
    if not mounted:
        parent.chmod(0o500)  # not root: permissions are enough
    try:
        g = write_graph([stage("a", params={"steps": 1})])
        run = subprocess.run([sys.executable, "-m", "s2d_plan.cli", "execute", str(g)], text=True,
                             capture_output=True, env=cli_env(parent / "home"), cwd=REPO, timeout=60)
        assert run.returncode == 2 and "cannot create the home directory" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(parent)], check=False)
        else:
            parent.chmod(0o700)


def test_nothing_is_left_running_after_refused_input(tmp_path, write_graph, cli, s2d_home):
    ok = cli("execute", str(write_graph([stage("a", params={"steps": 2})], name="ok.json")))
    assert ok.returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(graph(stage("b" * 300))))
    assert cli("execute", str(bad)).returncode == 2
    con = duckdb.connect(str(s2d_home / "history.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM stages WHERE status IN ('RUNNING', 'PENDING')").fetchall() == [(0,)]
    finally:
        con.close()
