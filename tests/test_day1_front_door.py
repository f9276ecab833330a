"""The front door: --version, and `init` writes a plan that `validate` accepts."""

from __future__ import annotations

from typer.testing import CliRunner

from s2d_plan import __version__
from s2d_plan.cli import app
from s2d_plan.plan.spec import load_plan

runner = CliRunner()


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"s2d-plan {__version__}"


def test_init_writes_a_plan_that_validates(tmp_path):
    out = tmp_path / "plan.yaml"
    result = runner.invoke(app, ["init", "--student", "Qwen/Qwen3-1.7B", "--teacher", "Qwen/Qwen3-8B", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("#") and "Qwen/Qwen3-8B" in text
    plan = load_plan(out)
    assert plan.student.model == "Qwen/Qwen3-1.7B"
    assert [t.model for t in plan.teachers] == ["Qwen/Qwen3-8B"]
    checked = runner.invoke(app, ["validate", str(out)])
    assert checked.exit_code == 0 and "valid" in checked.output


def test_init_refuses_to_overwrite(tmp_path):
    out = tmp_path / "plan.yaml"
    out.write_text("mine\n")
    result = runner.invoke(app, ["init", "--student", "a", "--teacher", "b", "-o", str(out)])
    assert result.exit_code == 2
    assert out.read_text() == "mine\n"
