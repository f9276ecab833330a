"""The command line as a user meets it: help everywhere, documented, and light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from s2d_plan.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_the_verbs_of_the_design_exist() -> None:
    for verb in ("validate", "recommend", "execute", "history", "runs", "show", "probe", "calibrate", "reward-check"):
        assert verb in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "s2d_plan.cli", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3
    readme = (ROOT / "README.md").read_text()
    assert f"s2d-plan {command}" in readme, f"README does not mention `s2d-plan {command}`"


def test_planner_imports_no_heavy_library() -> None:
    code = (
        "import sys, json\n"
        "import s2d_plan, s2d_plan.cli, s2d_plan.plan.spec, s2d_plan.graph, s2d_plan.plan.registry\n"
        "from typer.testing import CliRunner\n"
        "CliRunner().invoke(s2d_plan.cli.app, ['--help'])\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'trl', 'vllm', 'math_verify') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("s2d-plan")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "validate" in result.stdout
