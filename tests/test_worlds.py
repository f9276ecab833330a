"""benchmarks/worlds.py: world specs are parsed strictly, and a one-world grid on the shipped
d1 world (two arms, a few steps, 16 eval problems) yields the SQL table and its regret rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyworld.worlds.spec import WorldSpecError, builtin_worlds, parse_world

ROOT = Path(__file__).resolve().parents[1]

GOOD = "difficulty=1,student=2x64@1500,teacher=4x128@2000,labels=256,prompts=4096,hours=0.03"


def test_a_good_spec_round_trips():
    w = parse_world("name=w1," + GOOD)
    assert (w.name, w.student.name, w.teacher.name, w.labels, w.prompts, w.hours) == \
        ("w1", "2x64@1500", "4x128@2000", 256, 4096, 0.03)
    assert parse_world(w.spec()) == w


@pytest.mark.parametrize("spec, says", [
    (GOOD.replace("labels=256,", ""), "missing labels"),
    (GOOD + ",colour=blue", "unknown field 'colour'"),
    (GOOD.replace("4x128@2000", "4x128"), "teacher='4x128' is not LAYERSxHIDDEN@STEPS"),
    (GOOD.replace("teacher=4x128@2000", "teacher=2x32@2000"), "must be larger than the student"),
    (GOOD.replace("hours=0.03", "hours=lots"), "hours='lots' is not a number"),
    (GOOD.replace("labels=256", "labels=-3"), "labels='-3' is out of range"),
    (GOOD + ",labels=3", "labels given twice"),
    (GOOD.replace("difficulty=1", "difficulty"), "'difficulty' is not key=value"),
])
def test_bad_specs_are_refused_with_the_field_named(spec, says):
    with pytest.raises(WorldSpecError, match=says.replace("(", r"\(").replace("[", r"\[")):
        parse_world(spec)


def test_the_builtin_grid_has_at_least_six_distinct_worlds():
    worlds = builtin_worlds()
    assert len(worlds) >= 6 and len({w.spec().split(",", 1)[1] for w in worlds}) == len(worlds)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "benchmarks.worlds", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_a_bad_world_on_the_command_line_is_an_error_before_anything_runs(tmp_path):
    r = _cli("--world", GOOD.replace("2x64@1500", "2x64@7"), home=tmp_path / "h")
    assert r.returncode == 2 and "model 2x64@7 is not built" in r.stderr and "tinyworld.variants" in r.stderr
    assert not (tmp_path / "h" / "quick").exists()


def test_a_quick_one_world_grid_gives_the_sql_table_and_regret(tmp_path):
    out = tmp_path / "out"
    r = _cli("--quick", "--arms", "base", "a", "--no-policies", "--extra-seeds", "--out", str(out),
             home=tmp_path / "h")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "WITH arm_runs AS" in r.stdout and "always direct GRPO" in r.stdout
    doc = json.loads((out / "worlds-quick.json").read_text())
    rows = {row["arm"]: row for row in doc["rows"]}
    assert set(rows) == {"base", "a"} and all(row["world"] == "quick" for row in rows.values())
    # regret is the best fixed arm (a is the only one here) minus each arm, from the measured evals
    best = rows["a"]["sampled_avg"]
    assert rows["a"]["best_arm"] == "a" and rows["a"]["regret"] == 0.0
    assert rows["base"]["regret"] == pytest.approx(best - rows["base"]["sampled_avg"], abs=0.11)
    assert doc["regret"]["always direct GRPO"] == {"quick": 0.0}
    assert rows["a"]["cpu_hours"] > 0 and rows["base"]["cpu_hours"] == 0
    # the numbers are the history's: the eval metric of a's run, read straight from DuckDB
    import duckdb

    con = duckdb.connect(str(tmp_path / "h" / "quick" / "history.duckdb"), read_only=True)
    v = con.execute("""SELECT m.value FROM runs r JOIN stages s USING (run_id) JOIN metrics_latest m
                       ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
                       WHERE json_extract_string(r.graph, '$.meta.arm') = 'a' AND s.stage_id = 'final_eval'
                         AND m.key LIKE 'eval/%/avg@%'""").fetchall()
    assert len(v) == 1 and 100 * v[0][0] == pytest.approx(best, abs=0.051)
    assert (out / "worlds-quick.png").stat().st_size > 1000
