"""The code's layout follows its data: every import of the planner points one way, down
the journey plan -> predict -> allocate -> graph/compiler/rules -> run -> history, and
the planner and the runners meet only in ``s2d_plan.contract``. Read from the source
(imports anywhere in a module, lazy ones included), so a new climb back up fails here."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from s2d_plan.layers import ALLOWED

ROOT = Path(__file__).resolve().parents[1]
# A file near WARN_LINES holds two concepts: split it where they part (a warning, not a
# rule, so the count never decides where a class splits); past MAX_LINES it fails.
WARN_LINES = 500
MAX_LINES = 800
MAX_FUNCTION_LINES = 50

# what each part of the planner may import from the planner: s2d_plan/layers.py (one source with the manual)


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "s2d_plan")
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", modules("s2d_plan"), ids=lambda p: str(p.relative_to(ROOT)))
def test_planner_imports_point_down_the_data_flow(path):
    part = part_of(path)
    if part == "__init__":
        return
    wrong = set()
    for name in imported(path):
        if name.startswith("runners"):
            wrong.add(name)  # the planner launches runners by module name, never imports them
        elif name.startswith("s2d_plan."):
            target = name.split(".")[1]
            if target in ALLOWED and target != part and target not in ALLOWED[part]:
                wrong.add(name)
    assert not wrong, f"{part} may import only {sorted(ALLOWED[part])} from the planner"


@pytest.mark.parametrize("path", modules("runners"), ids=lambda p: p.name)
def test_runners_meet_the_planner_only_in_the_contract(path):
    planner = {n for n in imported(path) if n.startswith("s2d_plan")}
    assert all(n == "s2d_plan.contract" or n.startswith("s2d_plan.contract.") for n in planner), planner


@pytest.mark.parametrize("path", modules("s2d_plan") + modules("runners") + modules("tinyworld"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES
    if lines > WARN_LINES:
        warnings.warn(f"{path.name} has {lines} lines: does it hold two concepts?", stacklevel=1)
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= MAX_FUNCTION_LINES]
    assert not long, long


def test_the_checker_catches_a_climb_back_up(tmp_path):
    """The layout test itself: a run/ module that imports the allocator is refused."""
    bad = tmp_path / "s2d_plan" / "run" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from s2d_plan.allocate.allocator import allocate\n    import runners.grpo\n")
    names = imported(bad)
    assert "s2d_plan.allocate.allocator" in names and "runners.grpo" in names
    assert "allocate" not in ALLOWED["run"]
