"""Cache keys come from what a stage really runs: its runner module and every project
module that module imports, transitively, and nothing else. Checked on a copy of the
project whose files are edited, each key computed in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("grpo", "opd", "fkl", "rollout", "eval", "probe")
GRAPH = {"plan": "p", "stages": [
    {"id": k, "kind": k, "policy": "m", "teacher": "t" if k in ("opd", "fkl") else None} for k in KINDS]}
KEYS = ("import json, sys; from s2d_plan.graph import parse_graph; from s2d_plan.run.identity import cache_keys; "
        "print(json.dumps(cache_keys(parse_graph(json.loads(sys.argv[1])))))")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for package in ("s2d_plan", "runners", "tinyworld"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def keys(project: Path, cwd: Path | None = None) -> dict[str, str]:
    graph = {**GRAPH, "stages": [{k: v for k, v in s.items() if v is not None} for s in GRAPH["stages"]]}
    out = subprocess.run([sys.executable, "-c", KEYS, json.dumps(graph)], cwd=cwd or project, capture_output=True,
                         text=True, env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(out.stdout)


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_editing_a_runner_changes_its_key_only(copy):
    before = keys(copy)
    edit(copy / "runners" / "opd.py")  # no other runner imports it
    after = keys(copy)
    assert after["opd"] != before["opd"]
    assert {k: after[k] for k in KINDS if k != "opd"} == {k: before[k] for k in KINDS if k != "opd"}


def test_editing_the_tiny_model_builder_changes_no_key(copy):
    before = keys(copy)
    edit(copy / "tinyworld" / "models.py")
    edit(copy / "tinyworld" / "build.py")
    assert keys(copy) == before


def test_editing_a_shared_module_or_the_contract_changes_every_key_that_runs_it(copy):
    before = keys(copy)
    edit(copy / "runners" / "verifier.py")  # imported lazily by every sampling/training runner
    mid = keys(copy)
    assert all(mid[k] != before[k] for k in KINDS)
    edit(copy / "s2d_plan" / "contract" / "stage.py")
    contract = keys(copy)
    assert all(v != mid[k] for k, v in contract.items())
    edit(copy / "s2d_plan" / "plan" / "spec.py")  # the planner: no runner imports these
    edit(copy / "s2d_plan" / "allocate" / "allocator.py")
    assert keys(copy) == contract


def test_computing_keys_imports_no_heavy_library():
    """The executor hashes runner sources without importing them (nor trl, torch)."""
    code = KEYS.replace("print(json.dumps(cache_keys(parse_graph(json.loads(sys.argv[1])))))",
                        "cache_keys(parse_graph(json.loads(sys.argv[1]))); "
                        "print([m for m in ('torch', 'transformers', 'trl', 'runners.grpo') if m in sys.modules])")
    graph = {**GRAPH, "stages": [{k: v for k, v in s.items() if v is not None} for s in GRAPH["stages"]]}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(graph)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_installed_copy_has_per_kind_keys_that_follow_its_files(copy, tmp_path):
    """A normal (non-editable) install puts the runners under site-packages; their code
    still counts: every kind has its own version, equal to the checkout's (the version
    names modules, not paths), and editing an installed runner changes its key."""
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    site = tmp_path / "lib" / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(copy)],
                   check=True, capture_output=True, cwd=tmp_path)
    assert (site / "runners" / "opd.py").is_file() and not (site / "runners" / "opd.py").is_symlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed = keys(site, cwd=elsewhere)
    assert len(set(installed.values())) == len(KINDS), installed  # no kind hashes nothing
    assert installed == keys(copy)
    edit(site / "runners" / "opd.py")
    after = keys(site, cwd=elsewhere)
    assert after["opd"] != installed["opd"]
    assert {k: v for k, v in after.items() if k != "opd"} == {k: v for k, v in installed.items() if k != "opd"}
