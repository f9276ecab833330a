"""Issue 23: hostile plans, graphs and settings end in exit 2 with one line naming the
file or field, quickly, never a traceback. In-process (Typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, sim_stage
from typer.testing import CliRunner

from s2d_plan.cli import app
from s2d_plan.contract import stage as stage_mod


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    text = result.output  # stdout and stderr
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
    path.write_text('{"plan": "p", "stages": [' + stage + '], "plan": "q"}')
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


def test_control_characters_from_data_are_printed_escaped(tmp_path, s2d_home):
    plan = (REPO / "plans" / "tiny-cpu.yaml").read_text().replace("{name: arith,", '{name: "ar\\e]0;pwned\\aith",')
    (tmp_path / "plan.yaml").write_text(plan)
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps({"plan": "p\x1b[2J\x1b]0;title\x07\u202e", "stages": [sim_stage("a")]}))
    outputs = [invoke("validate", str(tmp_path / "plan.yaml"))[1], invoke("validate", str(graph))[1]]
    home = ["--home", str(s2d_home)]
    assert invoke("execute", str(graph), *home)[0] == 0
    for fmt in ("--table", "--csv"):
        code, out = invoke("history", "SELECT plan, chr(27) || '[2J' || chr(13) AS x FROM runs", fmt, *home)
        assert code == 0, out
        outputs.append(out)
    for out in outputs:
        assert not any(ch in out for ch in "\x1b\x07\r\u202e"), repr(out)
    assert "\\x1b[2J" in outputs[1] and "\\x1b[2J\\r" in outputs[2]


def tiny_plan(tmp_path, labeled: str, prompts: str = "../tiny-models/data/prompts.jsonl",
              evals: str = "../tiny-models/data/eval.jsonl"):
    text = (REPO / "plans" / "tiny-cpu.yaml").read_text()
    text = text.replace("../tiny-models/data/labeled.jsonl", labeled).replace(
        "../tiny-models/data/prompts.jsonl", prompts).replace("../tiny-models/data/eval.jsonl", evals)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_a_data_source_that_is_a_device_fifo_or_directory_is_exit_2(tmp_path, s2d_home):
    import os

    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "somedir").mkdir()
    cases = {"data.labeled.source": dict(labeled="/dev/zero"),
             "data.prompts.source": dict(labeled="ok.jsonl", prompts="fifo.jsonl"),
             "eval.0.source": dict(labeled="ok.jsonl", evals="somedir")}
    for field, sources in cases.items():
        path = tiny_plan(tmp_path, **sources)
        for args in (["validate", str(path)], ["recommend", str(path), "--home", str(s2d_home)]):
            code, out = invoke(*args)
            assert code == 2, (field, args, out)
            assert field in out and "Traceback" not in out, (field, args, out)


def test_saved_datasets_and_hub_ids_stay_accepted_as_sources(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    (tmp_path / "ok.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    code, out = invoke("validate", str(tiny_plan(tmp_path, "saved", prompts="org/prompts", evals="ok.jsonl")))
    assert code == 0 and "source" not in out.split("valid")[0], out
