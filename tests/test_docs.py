"""The docs as a user meets them: every command in the README with help, a plan reference
that covers every field, no pointer outside the repository, and a site that builds.

Nothing here writes into the checkout: the site goes to tmp_path.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("s2d_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in docs/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


HOOKS = _hooks()
COMMANDS = HOOKS.cli_commands()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_in_the_readme_and_has_help(name: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert name in readme, f"README.md does not mention `{name}`"
    cmd = COMMANDS[name]
    assert (cmd.help or cmd.short_help or "").strip(), f"`{name}` has no help text"
    for param in cmd.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            assert (param.help or "").strip(), f"`{name}` option {param.opts} has no help text"


def test_the_cli_reference_lists_every_command_and_option() -> None:
    page = HOOKS.cli_reference()
    for name, cmd in COMMANDS.items():
        assert f"## `{name}`" in page
        for param in cmd.params:
            if param.param_type_name == "option":
                assert f"`{', '.join(param.opts + list(param.secondary_opts))}`" in page


def _field_paths(model: type, prefix: str = "") -> list[str]:
    """Every field path of a pydantic model, recursively; written apart from the generator."""
    from pydantic import BaseModel

    def models(annotation: object) -> list[tuple[type, bool]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [(annotation, False)]
        inner = [m for arg in typing.get_args(annotation) for m, _ in models(arg)]
        many = typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(annotation))
        return [(m, many) for m in inner]

    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = prefix + name
        paths.append(path)
        for sub, many in models(field.annotation):
            paths.extend(_field_paths(sub, path + ("[]." if many else ".")))
    return paths


def test_the_plan_reference_covers_every_field_of_planspec() -> None:
    from s2d_plan.plan.spec import PlanSpec

    expected = _field_paths(PlanSpec)
    assert "compute.cluster" in expected and "teachers[].model" in expected  # the walk does recurse
    assert HOOKS.plan_fields() == expected
    page = HOOKS.plan_reference()
    for path in expected:
        assert f"| `{path}` |" in page, f"the plan reference misses {path}"


def test_the_architecture_page_shows_every_part() -> None:
    from s2d_plan import layers

    page = HOOKS.architecture()
    for part in layers.ALLOWED:
        assert f"| `{part}` |" in page


def test_no_file_points_at_the_shared_folder_outside_the_repository() -> None:
    needle = ".." + "/shared"  # spelt apart so this file does not match itself
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    offenders = []
    for rel in filter(None, listed):
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if needle in text:
            offenders.append(rel)
    assert offenders == []


def test_the_site_builds_strictly_outside_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    before = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*") if "__pycache__" not in p.parts)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    for page in ("plan-reference", "cli-reference", "architecture", "results"):
        assert (site / page / "index.html").is_file(), page
    after = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*") if "__pycache__" not in p.parts)
    assert after == before, "the build wrote into docs/"
    assert not (ROOT / "site").exists()
