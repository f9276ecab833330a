"""Issue 23: hostile plans, graphs and settings end in exit 2 with one line naming the
file or field, quickly, never a traceback. In-process (Typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
from conftest import sim_stage
from typer.testing import CliRunner

from s2d_plan.cli import app
from s2d_plan.contract import stage as stage_mod


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, text


BAD_YAML = {
    "recursive_alias": ("name: x\na: &a [*a]\n", "recursive alias"),
    "recursive_alias_map": ("name: x\na: &a {b: *a}\n", "recursive alias"),
    "nul_byte": ("name: x\x00\n", "#x0000"),
    "bel_byte": ("name: x\x07\n", "#x0007"),
    "big_list": ("a: [" + "1," * 120_000 + "1]\n", "more than 20000 values"),
    "many_keys": ("".join(f"k{i}: 1\n" for i in range(25_000)), "more than 20000 values"),
    "big_comment": ("#" + "x" * 10_000_000 + "\nname: x\n", "larger than 256 KiB"),
    "list_2mb": ("a: [" + "1," * 1_000_000 + "1]\n", "larger than 256 KiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_hostile_yaml_is_exit_2_with_one_line(case, tmp_path):
    text, message = BAD_YAML[case]
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    code, out = invoke("validate", str(path))
    assert code == 2, out
    assert message in out and "Traceback" not in out, out[:2000]
    assert len(out) < 2000


def test_graph_json_refuses_duplicate_keys(tmp_path, s2d_home):
    path = tmp_path / "g.json"
    stage = json.dumps(sim_stage("a"))
    path.write_text('{"plan": "p", "stages": [%s], "plan": "q"}' % stage)
    code, out = invoke("validate", str(path))
    assert code == 2, out
    assert "duplicate key 'plan'" in out and "Traceback" not in out, out


def test_a_missing_stage_plugin_module_is_exit_2(tmp_path, s2d_home, monkeypatch):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"plan": "p", "stages": [sim_stage("a")]}))
    monkeypatch.setenv("S2D_STAGE_PLUGINS", "no_such_plugin_module_xyz")
    monkeypatch.setattr(stage_mod, "_plugins_loaded", False)
    code, out = invoke("validate", str(path), env={"S2D_HOME": str(s2d_home)})
    assert code == 2, out
    assert "S2D_STAGE_PLUGINS" in out and "no_such_plugin_module_xyz" in out and "Traceback" not in out, out
